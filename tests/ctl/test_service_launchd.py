"""The macOS login item, on Linux: the plist checked with plistlib, launchctl calls exactly.

Nothing here has run on a Mac; launchd's own parser is not available, so the check is of keys
and value types against launchd.plist(5).
"""

from __future__ import annotations

import dataclasses
import os
import plistlib
from pathlib import Path

import pytest

from dbtkctl.service import installer as service
from dbtkctl.service.launchd import LaunchAgent
from dbtkctl.service.oscmd import Completed
from tests.ctl.fake_os import FakeOS
from tests.ctl.service_support import install_fake_os, make_target, private_dir

UID = 501  # a typical first macOS user; the domain is gui/<uid>
LABEL = "com.dbtoolkit.dbtkd"
# Keys launchd.plist(5) documents, with the type each must have.
LAUNCHD_KEY_TYPES: dict[str, type] = {
    "Label": str,
    "ProgramArguments": list,
    "EnvironmentVariables": dict,
    "RunAtLoad": bool,
    "KeepAlive": dict,
    "ExitTimeOut": int,
    "StandardOutPath": str,
    "StandardErrorPath": str,
}
PRINTED = """gui/501/com.dbtoolkit.dbtkd = {
	active count = 1
	path = /Users/ann/Library/LaunchAgents/com.dbtoolkit.dbtkd.plist
	type = LaunchAgent
	state = running

	program = /Applications/DB Toolkit.app/Contents/Resources/backend/dbtkd
	pid = 7311
}
"""


@pytest.fixture
def fake_os(monkeypatch: pytest.MonkeyPatch) -> FakeOS:
    return install_fake_os(monkeypatch)


@pytest.fixture
def agent(tmp_path: Path) -> LaunchAgent:
    target = make_target(tmp_path / "Users" / "ann", private_dir(tmp_path / "rt"))
    return LaunchAgent(dataclasses.replace(target, uid=UID))


def home_agent(agent: LaunchAgent, home: str) -> LaunchAgent:
    return LaunchAgent(dataclasses.replace(agent.target, home=home))


def parsed(agent: LaunchAgent) -> dict[str, object]:
    (content,) = agent.files().values()
    document = plistlib.loads(content)
    assert isinstance(document, dict)
    return document


def test_the_plist_parses_and_every_key_has_the_type_launchd_expects(agent: LaunchAgent) -> None:
    document = parsed(agent)
    assert set(document) <= set(LAUNCHD_KEY_TYPES), set(document) - set(LAUNCHD_KEY_TYPES)
    for key, value in document.items():
        assert type(value) is LAUNCHD_KEY_TYPES[key], (key, value)
    assert document["Label"] == LABEL
    assert document["RunAtLoad"] is True
    assert document["KeepAlive"] == {"SuccessfulExit": False}
    assert document["KeepAlive"]["SuccessfulExit"] is False  # type: ignore[index]
    assert "EnvironmentVariables" not in document  # the default profile


def test_program_arguments_start_dbtkd_itself_by_absolute_path_without_idle_exit(
    agent: LaunchAgent,
) -> None:
    arguments = parsed(agent)["ProgramArguments"]
    assert isinstance(arguments, list)
    assert all(isinstance(arg, str) for arg in arguments)
    assert arguments == [agent.target.executable, "--idle-exit", "0"]
    assert os.path.isabs(arguments[0])
    assert os.path.basename(arguments[0]) == "dbtkd"


def test_log_paths_are_absolute_and_in_the_users_log_dir(agent: LaunchAgent) -> None:
    document = parsed(agent)
    logs = os.path.join(agent.target.user_home, "Library", "Logs", "db-toolkit")
    assert document["StandardOutPath"] == os.path.join(logs, "launchd-stdout.log")
    assert document["StandardErrorPath"] == os.path.join(logs, "launchd-stderr.log")


def test_a_home_profile_gets_its_own_label_and_dbtk_home(agent: LaunchAgent, home: Path) -> None:
    profile = home_agent(agent, str(home) + ' & <odd> "name"')
    document = parsed(profile)
    assert document["Label"] == f"{LABEL}.{profile.target.suffix[1:]}"
    assert profile.plist_path.endswith(f"/Library/LaunchAgents/{document['Label']}.plist")
    assert document["EnvironmentVariables"] == {"DBTK_HOME": profile.target.home}
    assert document["StandardOutPath"] == f"{profile.target.home}/logs/launchd-stdout.log"
    assert profile.plist_path != agent.plist_path


def test_install_writes_the_plist_and_bootstraps_it_into_the_gui_domain(
    agent: LaunchAgent, fake_os: FakeOS
) -> None:
    fake_os.answer(("launchctl", "print"), Completed(113, "", "Could not find service"))
    document = service.install(agent)
    assert fake_os.calls == [
        ("launchctl", "print", f"gui/{UID}/{LABEL}"),
        ("launchctl", "bootstrap", f"gui/{UID}", agent.plist_path),
        ("launchctl", "print", f"gui/{UID}/{LABEL}"),
    ]
    assert Path(agent.plist_path).read_bytes() == agent.files()[agent.plist_path]
    assert os.path.isdir(agent.log_dir)  # launchd does not create it
    assert document["kind"] == "launchd"


def test_installing_again_unchanged_leaves_the_loaded_agent_alone(
    agent: LaunchAgent, fake_os: FakeOS
) -> None:
    fake_os.answer(("launchctl", "print"), Completed(113, "", "Could not find service"))
    service.install(agent)
    fake_os.answer(("launchctl", "print"), Completed(0, PRINTED))
    fake_os.reset()
    document = service.install(agent)
    assert fake_os.calls == [("launchctl", "print", f"gui/{UID}/{LABEL}")] * 2
    assert document["changed"] == []
    assert document["status"]["login_item_pid"] == 7311
    assert document["status"]["active"] is True


def test_a_changed_plist_is_booted_out_and_bootstrapped_again(
    agent: LaunchAgent, fake_os: FakeOS
) -> None:
    os.makedirs(os.path.dirname(agent.plist_path))
    Path(agent.plist_path).write_bytes(b"<plist>an older version</plist>")
    fake_os.answer(("launchctl", "print"), Completed(0, PRINTED))
    service.install(agent)
    assert fake_os.calls == [
        ("launchctl", "print", f"gui/{UID}/{LABEL}"),
        ("launchctl", "bootout", f"gui/{UID}/{LABEL}"),
        ("launchctl", "bootstrap", f"gui/{UID}", agent.plist_path),
        ("launchctl", "print", f"gui/{UID}/{LABEL}"),
    ]


def test_uninstall_boots_out_and_removes_the_plist_and_its_logs(
    agent: LaunchAgent, fake_os: FakeOS
) -> None:
    fake_os.answer(("launchctl", "print"), Completed(113, "", "Could not find service"))
    service.install(agent)
    for log in agent.log_files:
        Path(log).write_text("BACKEND_PORT:8000\n")
    fake_os.answer(("launchctl", "print"), Completed(0, PRINTED))
    fake_os.reset()
    service.uninstall(agent)
    assert fake_os.calls == [
        ("launchctl", "print", f"gui/{UID}/{LABEL}"),
        ("launchctl", "bootout", f"gui/{UID}/{LABEL}"),
    ]
    assert [p for p in (agent.plist_path, *agent.log_files) if os.path.exists(p)] == []


def test_dry_run_only_asks_launchctl_and_writes_nothing(
    agent: LaunchAgent, fake_os: FakeOS
) -> None:
    fake_os.answer(("launchctl", "print"), Completed(113, "", "Could not find service"))
    document = service.install(agent, dry_run=True)
    assert fake_os.calls == [("launchctl", "print", f"gui/{UID}/{LABEL}")]  # read-only
    assert not os.path.exists(agent.target.user_home)
    assert [step["op"] for step in document["steps"]] == ["write", "mkdir", "run"]
    assert document["steps"][-1]["argv"] == [
        "launchctl",
        "bootstrap",
        f"gui/{UID}",
        agent.plist_path,
    ]
