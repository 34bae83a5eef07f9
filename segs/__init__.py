"""SEGS, the Smart Energy Grid System: metering from the Modbus register to the invoice."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("segs")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
