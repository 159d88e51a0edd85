"""balance-server: a prepaid-credits wallet with a live balance."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("balance-server")
except PackageNotFoundError:  # a checkout on the path, never installed
    __version__ = "0+unknown"
