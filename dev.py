#!/usr/bin/env python3
"""The README's two commands: ``python3 dev.py start`` and ``python3 dev.py test``.

Both set up ``.venv`` first (created on first use, reinstalled when ``pyproject.toml``
changes), so a fresh machine needs only Python 3.11+ (and Node for the Electron tests).
``start`` starts the daemon and prints its port and URL; ``test`` runs the linters and the
whole test suite, exiting non-zero if anything fails. Stdlib only: it runs before any
dependency is installed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(ROOT, ".venv")
BIN = os.path.join(VENV, "Scripts" if sys.platform == "win32" else "bin")
PYTHON = os.path.join(BIN, "python.exe" if sys.platform == "win32" else "python")
STAMP = os.path.join(VENV, ".dbtk-installed")
ELECTRON = os.path.join(ROOT, "electron")


def _run(*argv: str, cwd: str = ROOT) -> int:
    print("+ " + " ".join(argv), file=sys.stderr, flush=True)
    return subprocess.call(argv, cwd=cwd)


def _fingerprint() -> str:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


def ensure_venv() -> None:
    """Create ``.venv`` and install the project with its test extras, once per pyproject."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may run under any python3
        sys.exit(f"dev.py: Python 3.11+ is required, this is {sys.version.split()[0]}")
    if not os.path.exists(PYTHON):
        print(f"creating {VENV}", file=sys.stderr)
        venv.create(VENV, with_pip=True)
    try:
        with open(STAMP, encoding="utf-8") as file:
            if file.read() == _fingerprint():
                return
    except FileNotFoundError:
        pass
    # compat mode: a plain .pth entry, so dbtkctl does not pay for an import hook at start-up.
    steps = [
        (PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip"),
        (
            PYTHON,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--editable",
            ".[test]",
            "--config-settings",
            "editable_mode=compat",
        ),
    ]
    for step in steps:
        if _run(*step) != 0:
            sys.exit("dev.py: installing the project failed (see above)")
    with open(STAMP, "w", encoding="utf-8") as file:
        file.write(_fingerprint())


def start() -> int:
    ensure_venv()
    dbtkctl = os.path.join(BIN, "dbtkctl")
    code = subprocess.call([dbtkctl, "start", *sys.argv[2:]])
    if code != 0:
        return code
    port = subprocess.run([dbtkctl, "port", "--no-start"], capture_output=True, text=True)
    url = subprocess.run([dbtkctl, "url", "--no-start"], capture_output=True, text=True)
    print(f"port {port.stdout.strip()}\nurl  {url.stdout.strip()}")
    print("(dbtkctl status | logs | stop: see README.md)", file=sys.stderr)
    return 0


def test() -> int:
    ensure_venv()
    failures = []
    checks: list[tuple[str, tuple[str, ...], str]] = [
        ("ruff check", (PYTHON, "-m", "ruff", "check", "."), ROOT),
        ("ruff format", (PYTHON, "-m", "ruff", "format", "--check", "."), ROOT),
        ("mypy", (PYTHON, "-m", "mypy"), ROOT),
        # The Windows and macOS branches are type-checked here too (sys.platform checks).
        ("mypy win32", (PYTHON, "-m", "mypy", "--platform", "win32"), ROOT),
        ("mypy darwin", (PYTHON, "-m", "mypy", "--platform", "darwin"), ROOT),
        ("pytest", (PYTHON, "-m", "pytest", *sys.argv[2:]), ROOT),
    ]
    if os.path.exists(os.path.join(ELECTRON, "package.json")):
        checks.append(("npm ci", ("npm", "ci", "--no-audit", "--no-fund"), ELECTRON))
        checks.append(("node --test", ("npm", "test"), ELECTRON))
    for name, argv, cwd in checks:
        if _run(*argv, cwd=cwd) != 0:
            failures.append(name)
    if failures:
        print(f"FAILED: {', '.join(failures)}", file=sys.stderr)
        return 1
    skipped = _skipped_here()
    print("all checks passed" + (" except what was skipped:" if skipped else ""), file=sys.stderr)
    for line in skipped:
        print(f"  skipped: {line}", file=sys.stderr)
    return 0


def _skipped_here() -> list[str]:
    """What this machine's test run skips and why (with CI=true a required one fails instead:
    tests/conftest.py, electron/test/*-chromium.test.js)."""
    skipped = [
        "tests/frozen: they test the frozen build; .ci/run builds it (./build-backend.sh) and "
        "runs them with DBTK_BIN_DIR=dist/db-toolkit-backend",
    ]
    browsers = ("/usr/bin/chromium", "/usr/lib/chromium/chromium", "/usr/bin/chromium-browser")
    if not os.environ.get("CHROMIUM") and not any(os.path.exists(b) for b in browsers):
        skipped.append("the Chromium tests (electron/test/*-chromium): apt-get install chromium")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        skipped.append("tests that mount a tmpfs or switch uid (see the SKIPPED lines): need root")
    return skipped


def main() -> int:
    commands = {"start": start, "test": test, "setup": lambda: ensure_venv() or 0}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(
            "usage: python3 dev.py start [dbtkctl start flags] | test [pytest args] | setup",
            file=sys.stderr,
        )
        return 2
    return commands[sys.argv[1]]()


if __name__ == "__main__":
    sys.exit(main())
