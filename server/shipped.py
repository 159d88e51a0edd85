"""The files that ship beside the code: schema.sql and the browser client that `dev` serves.

Their one copy is at the top of the repository. A wheel carries them inside this package, in
_shipped/ (pyproject.toml's force-include puts them there); a checkout, and the editable
install made of it, has no _shipped/ and reads them where they are.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def path(name: str) -> Path:
    """Where `name`, a path from the top of the repository, is in this installation."""
    package = files("server")
    # pip installs a wheel as files, and StaticFiles, FileResponse and migrate want paths.
    if not isinstance(package, Path):
        raise RuntimeError(f"balance-server must be installed as files, not in {package}")
    shipped = package / "_shipped"
    return (shipped if shipped.is_dir() else package.parent) / name
