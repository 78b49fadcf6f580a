"""Shared pieces of the login-item tests: targets in temporary directories, the seam fake,
and the external tools (``systemd-analyze``) that CI must have rather than skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dbtkctl.service import oscmd
from dbtkctl.service.loginitem import Target, daemon_executable
from tests.ctl.fake_os import FakeOS


def require_tool(name: str) -> str:
    """The tool's path; a missing tool fails under CI (``CI=true``) and skips elsewhere."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is missing: apt-get install -y systemd"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def private_dir(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return str(path)


def make_target(
    user_home: Path,
    runtime_dir: str,
    home: str | None = None,
    executable: str | None = None,
    **env: str,
) -> Target:
    return Target(
        home=home,
        user_home=str(user_home),
        executable=executable or daemon_executable(),
        env={"XDG_RUNTIME_DIR": runtime_dir, **env},
        uid=os.getuid(),
    )


def systemd_verify(unit_files: list[str], runtime_dir: str, user_home: Path) -> tuple[int, str]:
    """``systemd-analyze verify --user`` on the files: exit status and everything it printed."""
    tool = require_tool("systemd-analyze")
    env = dict(os.environ, XDG_RUNTIME_DIR=runtime_dir, HOME=str(user_home))
    env.pop("XDG_CONFIG_HOME", None)
    proc = subprocess.run(
        [tool, "verify", "--user", *unit_files],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    return proc.returncode, proc.stdout + proc.stderr


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file's settings by section; values in order (systemd allows repeats)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def install_fake_os(monkeypatch: pytest.MonkeyPatch) -> FakeOS:
    """Put a ``FakeOS`` in the ``oscmd.run`` seam for the rest of the test."""
    fake = FakeOS()
    monkeypatch.setattr(oscmd, "run", fake)
    return fake
