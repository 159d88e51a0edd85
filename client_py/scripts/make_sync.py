"""Writes balance_client/_sync_client.py from _async_client.py (the unasync library's token
rewrite: async/await dropped, async names mapped to their sync twins). Run it after every
change of the async client; tests/sdk/test_sync.py fails when the two disagree.

    python client_py/scripts/make_sync.py [--check]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import unasync

PACKAGE = Path(__file__).resolve().parent.parent / "balance_client"
SOURCE, TARGET = PACKAGE / "_async_client.py", PACKAGE / "_sync_client.py"
RENAMES = {
    "AsyncBalance": "Balance", "AsyncReservation": "Reservation", "AsyncClient": "Client",
    "AsyncBaseTransport": "BaseTransport", "AsyncIterator": "Iterator", "aclose": "close",
    "wait_async": "wait_sync", "_async_client": "_sync_client",
}
HEADER = ('"""The sync client: generated from _async_client.py by scripts/make_sync.py. Do not\n'
          'edit: change the async client and run the script."""\n')


def generate(into: Path) -> str:
    """The sync client's source, written under `into`."""
    out = into / "_sync_client.py"
    unasync.unasync_files([str(SOURCE)], rules=[unasync.Rule(
        fromdir=str(PACKAGE) + "/", todir=str(into) + "/", additional_replacements=RENAMES)])
    generated = (into / SOURCE.name).read_text()
    out.write_text(generated)
    text = generated.split('"""', 2)[2].lstrip("\n")  # the async module's docstring goes
    return HEADER + "\n" + text


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        source = generate(Path(tmp))
    if "--check" in sys.argv:
        if TARGET.read_text() != source:
            print(f"{TARGET} is stale: run python client_py/scripts/make_sync.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
