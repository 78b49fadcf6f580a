"""``python -m dbtkctl`` and the ``dbtkctl`` console script."""

from __future__ import annotations

import sys


def run() -> None:
    from dbtkctl.cli import main

    sys.exit(main())


if __name__ == "__main__":
    run()
