"""``dbtkctl service`` as a user runs it: a real process, with a fake ``systemctl`` on PATH.

The fake records its argv, so these tests see the commands the CLI ran through the seam
without a systemd user instance (there is none on the test machine).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dbtkctl.service.activation import profile_id
from tests.ctl.service_support import private_dir
from tests.support import run_ctl

FAKE_SYSTEMCTL = """#!/bin/sh
printf '%s\\n' "$*" >> "$FAKE_SYSTEMCTL_LOG"
exit 0
"""


@pytest.fixture
def env(tmp_path: Path, home: Path) -> dict[str, str]:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    systemctl = fake_bin / "systemctl"
    systemctl.write_text(FAKE_SYSTEMCTL)
    systemctl.chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DBTK_", "XDG_"))}
    return clean | {
        "HOME": str(tmp_path / "user"),
        "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}",
        "XDG_RUNTIME_DIR": private_dir(tmp_path / "rt"),
        "FAKE_SYSTEMCTL_LOG": str(tmp_path / "systemctl.log"),
        "DBTK_HOME": str(home),
    }


def systemctl_calls(env: dict[str, str]) -> list[str]:
    try:
        return Path(env["FAKE_SYSTEMCTL_LOG"]).read_text().splitlines()
    except FileNotFoundError:
        return []


def unit_dir(env: dict[str, str]) -> Path:
    return Path(env["HOME"]) / ".config" / "systemd" / "user"


def test_dry_run_prints_the_units_and_commands_and_touches_nothing(
    home: Path, env: dict[str, str]
) -> None:
    result = run_ctl(home, "service", "install", "--dry-run", env=env)
    assert result.code == 0, result.err
    name = f"dbtkd-{profile_id(str(home))}"
    assert f"write {unit_dir(env)}/{name}.service" in result.out
    assert f'  | Environment="DBTK_HOME={home}"' in result.out
    assert "run: systemctl --user daemon-reload" in result.out
    assert f"run: systemctl --user enable --now {name}.socket {name}.service" in result.out
    assert not Path(env["HOME"]).exists()
    assert systemctl_calls(env) == []


def test_dry_run_json_is_one_document_with_every_step(home: Path, env: dict[str, str]) -> None:
    result = run_ctl(home, "service", "install", "--dry-run", "--json", env=env)
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert document["dry_run"] is True
    assert [step["op"] for step in document["steps"]] == ["write", "write", "run", "run"]
    assert not Path(env["HOME"]).exists()


def test_install_status_and_uninstall_round_trip_leaves_nothing_behind(
    home: Path, env: dict[str, str]
) -> None:
    name = f"dbtkd-{profile_id(str(home))}"
    installed = run_ctl(home, "service", "install", env=env)
    assert installed.code == 0, installed.err
    assert installed.out.startswith(f"installed: systemd user units {name}.service")
    assert sorted(p.name for p in unit_dir(env).iterdir()) == [f"{name}.service", f"{name}.socket"]
    assert systemctl_calls(env) == [
        "--user daemon-reload",
        f"--user enable --now {name}.socket {name}.service",
        f"--user show --property=Id,LoadState,UnitFileState,ActiveState,SubState,MainPID "
        f"{name}.service {name}.socket",
    ]

    again = run_ctl(home, "service", "install", env=env)
    assert again.out.startswith("already installed:"), again.out

    status = run_ctl(home, "service", "status", "--json", env=env)
    assert status.code == 0, status.err
    document = status.json()
    assert (document["installed"], document["name"]) == (True, f"{name}.service")
    assert document["daemon_pid"] is None

    removed = run_ctl(home, "service", "uninstall", env=env)
    assert removed.code == 0, removed.err
    assert removed.out.strip() == f"removed login item {name}.service"
    assert list(unit_dir(env).iterdir()) == []
    assert systemctl_calls(env)[-2:] == [
        f"--user disable --now {name}.socket {name}.service",
        "--user daemon-reload",
    ]

    twice = run_ctl(home, "service", "uninstall", env=env)
    assert twice.out.strip() == f"login item {name}.service is not installed; nothing to remove"


def test_status_of_a_login_item_never_installed_says_so(home: Path, env: dict[str, str]) -> None:
    result = run_ctl(home, "service", "status", env=env)
    assert result.code == 0, result.err
    name = f"dbtkd-{profile_id(str(home))}.service"
    assert result.out.strip() == f"login item {name} (systemd) is not installed"
    assert systemctl_calls(env) == []
