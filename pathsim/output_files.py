"""Writing pathsim's outputs: checked before the work starts, and each one whole or not at all.

Every file pathsim writes (``--json``, ``--trace``, placements, profiles, workloads, report folders) goes through
here, so a full disk, a read-only folder, a device such as ``/dev/full`` or a Ctrl-C halfway never leaves a
truncated file where a good one was, or a report folder mixing an old page with new figures:

- :func:`check_output` runs before the computation (the CLI calls it for every output flag), so a long run does
  not end in "cannot write"; it refuses a path that is a folder (or, for a folder, a file), an existing special
  file (writing beside ``/dev/full`` and renaming over it would replace the device), and a path whose nearest
  existing folder is not writable;
- :func:`write_file` writes a temporary file beside the target and renames it over the target (atomic on POSIX);
- :func:`write_folder` builds a report folder beside the target and swaps it in.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from pathsim.errors import PathsimConfigError
from pathsim.nested import leaves

FORMATS = ("table", "json", "csv")  # what a command prints its result as (--format)

# A folder pathsim replaces whole must be empty or hold one of these: a previous report or fidelity page, not a
# user's other files.
FOLDER_MARKERS = ("report.json", "fidelity.json")


def _nearest_existing(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists():
            return parent
    return Path(".")


def check_output(path: "str | Path", flag: str, kind: str = "file") -> Path:
    """`path` as an output of `kind` ("file" or "folder") given by `flag`, or a PathsimConfigError saying why not."""
    if kind == "file" and str(path).endswith(os.sep):
        raise PathsimConfigError("<command line>", flag, f"{str(path)!r} names a folder, not a file", "give a file name, e.g. out/result.json")
    path = Path(path)
    if kind == "file" and path.name in ("", ".", ".."):
        raise PathsimConfigError("<command line>", flag, f"{str(path)!r} names a folder, not a file", "give a file name, e.g. out/result.json")
    if path.exists() or path.is_symlink():
        mode = os.stat(path).st_mode if path.exists() else 0
        if kind == "file" and stat.S_ISDIR(mode):
            raise PathsimConfigError("<command line>", flag, f"{str(path)!r} is a folder", "give a file name inside it, e.g. "
                                     f"{path / 'result.json'}")
        if kind == "folder" and not stat.S_ISDIR(mode):
            raise PathsimConfigError("<command line>", flag, f"{str(path)!r} exists and is not a folder", "give a new folder name")
        if kind == "file" and not stat.S_ISREG(mode):
            raise PathsimConfigError("<command line>", flag, f"{str(path)!r} is not a regular file (a device, pipe or dangling link)",
                                     "give the path of a file to create or replace")
        if kind == "folder":
            entries = {p.name for p in path.iterdir()}
            if entries and not entries & set(FOLDER_MARKERS):
                raise PathsimConfigError("<command line>", flag, f"{str(path)!r} holds other files, not a pathsim report",
                                         "give a new or empty folder (pathsim replaces the folder whole)")
    base = _nearest_existing(path.parent if not path.exists() or kind == "file" else path)
    if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
        raise PathsimConfigError("<command line>", flag, f"cannot write under {str(base)!r} (not a writable folder)",
                                 "choose a path in a folder you can write to")
    return path


def check_distinct(outputs: dict[str, "Path | None"]) -> None:
    """Refuse one path given to two output flags: the second would overwrite the first."""
    seen: dict[Path, str] = {}
    for flag, path in outputs.items():
        if path is None:
            continue
        resolved = Path(os.path.abspath(path))
        if resolved in seen:
            raise PathsimConfigError("<command line>", flag, f"{str(path)!r} is also given to {seen[resolved]}",
                                     "give each output its own path")
        seen[resolved] = flag


def write_file(path: "str | Path", data: "bytes | str", flag: str, what: str = "the result") -> Path:
    """Write `data` to `path` whole or not at all (missing folders are created); returns the path."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    partial = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".partial", delete=False) as handle:
            partial = Path(handle.name)
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(partial, 0o666 & ~_umask())
        os.replace(partial, path)
        partial = None
    except OSError as exc:
        raise PathsimConfigError(str(path), flag, f"cannot write {what} ({exc.strerror or exc})", "choose a writable path with free space") from None
    finally:
        if partial is not None:
            partial.unlink(missing_ok=True)
    return path


def write_folder(out: "str | Path", files: dict[Path, bytes], flag: str, what: str = "the report") -> list[Path]:
    """Write `files` (relative paths) as the folder `out`, replacing an earlier one whole; returns their paths."""
    out = Path(out)
    check_output(out, flag, "folder")
    staging = old = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
        for relative, content in files.items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        os.chmod(staging, 0o777 & ~_umask())
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old / "report")  # moved aside, not deleted, until the new folder is in place
        os.replace(staging, out)
        staging = None
    except OSError as exc:
        raise PathsimConfigError(str(out), flag, f"cannot write {what} ({exc.strerror or exc})", "choose a writable folder with free space") from None
    finally:  # also on Ctrl-C: the earlier report goes back where it was if the new one is not in place
        if old is not None and not out.exists() and (old / "report").exists():
            os.replace(old / "report", out)
        for leftover in (staging, old):
            if leftover is not None:
                shutil.rmtree(leftover, ignore_errors=True)
    return [out / relative for relative in files]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def csv_cell(value):
    """A text cell a spreadsheet will not run: a leading = + - @ (or tab / CR) makes Excel and LibreOffice read a
    formula (`=HYPERLINK(...)` in a task name), so such a cell gets a leading apostrophe, as OWASP's CSV injection
    advice says. Numbers are written by repr, never through here."""
    return "'" + value if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def result_csv(result) -> str:
    """A result (a pydantic model) as CSV rows of field path and value, one per number or text in it."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["field", "value"])
    writer.writerows([path, repr(value) if isinstance(value, float) else csv_cell(value)]
                     for path, value in leaves(result.model_dump(mode="json")))
    return buffer.getvalue()
