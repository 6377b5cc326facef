"""Numeric arrays users hand pathsim as files (.npy or .csv): traffic matrices, routing histograms.

One reader so every such file fails the same way: a PathsimConfigError naming
the file, the field it was given for, and what to write instead. A .npy header
is checked before its data is allocated (a header may claim 10^12 entries),
and every value must be a finite number: NaN or infinity in a histogram or a
traffic matrix would come out as NaN probabilities or infinite times.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from pathsim.errors import PathsimConfigError
from pathsim.input_files import open_regular

ARRAY_LIMIT_BYTES = 2**30  # the largest array pathsim reads: 2^27 float64 values (a 11,585-rank traffic matrix)


def read_numeric_array(path: Path, source: str, field: str, what: str) -> np.ndarray:
    """The finite float64 contents of a .npy or .csv file; ``what`` says what it should hold (for the fix)."""
    path = Path(path)
    if path.suffix not in (".npy", ".csv"):
        raise PathsimConfigError(source, field, f"unsupported format {path.suffix!r} for {path.name}", "save it as .npy or .csv")
    data = open_regular(path, source, field, f"{what} as .npy or .csv", ARRAY_LIMIT_BYTES)
    try:
        if path.suffix == ".npy":
            buffer = io.BytesIO(data)
            version = np.lib.format.read_magic(buffer)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = header(buffer)  # the header only: no data allocated yet
            if dtype.kind not in "biuf":
                raise ValueError(f"holds {dtype} values")
            claimed = int(np.prod(shape, dtype=object) if shape else 1) * dtype.itemsize
            if claimed > len(data):
                raise ValueError(f"its header claims {claimed:,} bytes of data, but the file holds {len(data):,}")
            buffer.seek(0)
            array = np.load(buffer, allow_pickle=False)
        else:
            array = np.loadtxt(io.StringIO(data.decode("utf-8")), delimiter=",", ndmin=2)
        if array.dtype.kind not in "biuf":
            raise ValueError(f"holds {array.dtype} values")
        array = np.asarray(array, dtype=np.float64)
    except (ValueError, OSError, UnicodeDecodeError, EOFError) as exc:
        raise PathsimConfigError(source, field, f"{path.name} cannot be read as numbers ({exc})", f"write {what}, comma-separated") from None
    if not np.all(np.isfinite(array)):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
        raise PathsimConfigError(source, field, f"{path.name} holds {array[bad]} at index {list(bad)}",
                                 f"write {what} as finite numbers")
    return array
