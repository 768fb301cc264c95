"""The console script's entry point, kept free of heavy imports.

typer, rich and click take a few hundred milliseconds to import on a loaded machine; a Ctrl-C in
that window used to print Python's traceback. Importing them here, under a handler that needs only
the standard library, makes it the same one line and exit 130 as later in startup.
"""

from __future__ import annotations

import sys

from facerestore.ranks import main_rank

INTERRUPTED_EARLY = "interrupted before the command began its work; nothing was written"


def main() -> None:
    try:
        from facerestore.cli.app import main as run
    except KeyboardInterrupt:
        if main_rank():
            print(INTERRUPTED_EARLY, file=sys.stderr)
        sys.exit(130)
    run()
