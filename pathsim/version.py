"""The installed pathsim version, recorded in every result for provenance."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pathsim")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
