"""``python -m dbtkd`` and the ``dbtkd`` console script.

``dbtkd _worker ...`` is the worker (started by the supervisor only); anything else is the
supervisor. The branch happens before either is imported, so the supervisor never loads
Starlette or Hypercorn.
"""

from __future__ import annotations

import sys


def run() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["_worker"]:
        from dbtkd.worker import main as worker_main

        sys.exit(worker_main(argv[1:]))
    from dbtkd.supervisor import main

    sys.exit(main(argv))


if __name__ == "__main__":
    run()
