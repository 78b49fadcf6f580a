"""``python -m dbtkd`` and the ``dbtkd`` console script.

``dbtkd _worker ...`` is the worker (started by the supervisor only); anything else is the
supervisor. The branch happens before either is imported, so the supervisor never loads
Starlette or Hypercorn. ``dbtkd _selftest`` (only with ``DBTK_FROZEN_SELFTEST=1``) checks a
frozen build: it imports every module under ``dbtkd.app`` and every module they import lazily
(the database drivers), prints a JSON report and exits 1 if any import fails.
"""

from __future__ import annotations

import gc
import os
import sys

# Stdlib modules that exist only on some OSes: the self-test skips a lazy import of one elsewhere.
WINDOWS_ONLY = {"_msi", "_overlapped", "_winapi", "msilib", "msvcrt", "nt", "winreg", "winsound"}
POSIX_ONLY = {"_posixsubprocess", "fcntl", "grp", "posix", "pty", "pwd", "resource", "termios"}
MACOS_ONLY = {"_scproxy"}
# The OS keyring's clients (dbtkd/passwords.py): jeepney on Linux, keyring elsewhere.
LINUX_ONLY = {"jeepney"}
NOT_LINUX = {"keyring"}


def run() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["_worker"]:
        # No collections while the worker imports (~60,000 objects, nearly all kept): they
        # would cost ~15 ms of a cold start. ``dbtkd.worker.settle_collector`` turns them on.
        gc.disable()
        from dbtkd.worker import main as worker_main

        sys.exit(worker_main(argv[1:]))
    if argv[:1] == ["_zygote"]:
        from dbtkd.zygote import main as zygote_main

        sys.exit(zygote_main(argv[1:]))
    if argv[:1] == ["_selftest"] and os.environ.get("DBTK_FROZEN_SELFTEST") == "1":
        sys.exit(selftest(argv[1:]))
    # The supervisor speaks no TLS; without this, asyncio would load ssl (and OpenSSL) anyway,
    # about 0.7 MiB of every daemon's memory. The worker is a separate process and keeps ssl.
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    # Before the first worker starts: it inherits the umask, and its files are the user's only.
    os.umask(0o077)
    from dbtkd import spawn

    # The worker's imports are the longest step of a cold start: begin them now, while this
    # process reads its settings, takes the lock and binds the port (dbtkd.launch).
    early = spawn.start_early(argv, os.environ)
    from dbtkd.launch import main

    sys.exit(main(argv, early))


def selftest(argv: list[str]) -> int:
    """Import ``dbtkd.app`` whole and the modules named in ``argv``; report as JSON; 1 on failure.

    Walks ``dbtkd.app`` with pkgutil (modules added later are covered without a list) and scans
    each module's bytecode for absolute imports inside functions, which is how the database
    drivers are imported, so a driver missing from a frozen build fails here, not on first use.
    """
    import dis
    import importlib
    import json
    import pkgutil
    import types

    def imported_names(code: types.CodeType) -> set[str]:
        """Absolute imports anywhere in ``code``, nested functions included."""
        found: set[str] = set()
        instructions = list(dis.get_instructions(code))
        for i, ins in enumerate(instructions):
            if ins.opname == "IMPORT_NAME" and i >= 2 and instructions[i - 2].argval == 0:
                found.add(str(ins.argval))
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                found |= imported_names(const)
        return found

    results: dict[str, str | None] = {}

    def attempt(name: str) -> None:
        if name not in results:
            try:
                importlib.import_module(name)
                results[name] = None
            except Exception as error:
                results[name] = f"{type(error).__name__}: {error}"

    import dbtkd.app

    other_os_only = (
        (POSIX_ONLY if sys.platform == "win32" else WINDOWS_ONLY)
        | (set() if sys.platform == "darwin" else MACOS_ONLY)
        | (NOT_LINUX if sys.platform == "linux" else LINUX_ONLY)
    )
    walked = ["dbtkd.app"]
    walked += [m.name for m in pkgutil.walk_packages(dbtkd.app.__path__, "dbtkd.app.")]
    lazy: set[str] = set()
    for name in walked:
        attempt(name)
        module = sys.modules.get(name)
        spec = getattr(module, "__spec__", None)
        get_code = getattr(spec.loader, "get_code", None) if spec is not None else None
        code = get_code(name) if get_code is not None else None
        if code is not None:
            lazy |= {n for n in imported_names(code) if n.partition(".")[0] not in other_os_only}
    required = list(argv)
    for name in sorted(lazy | set(required)):
        attempt(name)
    failures = {name: error for name, error in results.items() if error is not None}
    report = {
        "frozen": bool(getattr(sys, "frozen", False)),
        "executable": sys.executable,
        "app_file": dbtkd.app.__file__,
        "walked": walked,
        "imports_scanned": sorted(lazy),
        "required": required,
        "failures": failures,
    }
    print(json.dumps(report, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    run()
