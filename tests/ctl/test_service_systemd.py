"""The Linux login item: rendered units, systemd-analyze's verdict, exact systemctl calls."""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from pathlib import Path

import pytest

from dbtkctl.service import installer as service
from dbtkctl.service import loginitem
from dbtkctl.service.oscmd import Completed
from dbtkctl.service.plan import ServiceError
from dbtkctl.service.systemd import SystemdUnits, quote_word
from dbtkd import paths
from tests.ctl.fake_os import FakeOS
from tests.ctl.service_support import (
    install_fake_os,
    make_target,
    private_dir,
    systemd_verify,
    unit_settings,
)
from tests.support import ProcessReaper, pid_alive, wait_until

SYSTEMCTL = ("systemctl", "--user")
SHOW = (*SYSTEMCTL, "show", "--property=Id,LoadState,UnitFileState,ActiveState,SubState,MainPID")


@pytest.fixture
def runtime_dir(tmp_path: Path) -> str:
    return private_dir(tmp_path / "xdg-runtime")


@pytest.fixture
def user_home(tmp_path: Path) -> Path:
    return tmp_path / "user"


@pytest.fixture
def fake_os(monkeypatch: pytest.MonkeyPatch) -> FakeOS:
    return install_fake_os(monkeypatch)


def write_units(item: SystemdUnits) -> list[str]:
    files = item.files()
    for path, content in files.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Path(path).write_bytes(content)
    return sorted(files)


def show_output(item: SystemdUnits, *, active: bool, pid: int = 0) -> str:
    service_state = "active" if active else "inactive"
    return (
        f"Id={item.service_name}\nLoadState=loaded\nUnitFileState=enabled\n"
        f"ActiveState={service_state}\nSubState=running\nMainPID={pid}\n\n"
        f"Id={item.socket_name}\nLoadState=loaded\nUnitFileState=enabled\n"
        "ActiveState=active\nSubState=listening\nMainPID=0\n"
    )


def odd_executable(tmp_path: Path) -> str:
    """A dbtkd in a directory whose name needs every kind of unit-file escaping."""
    directory = tmp_path / "odd dir %h $HOME ${X} ;&é"
    directory.mkdir()
    executable = directory / "dbtkd"
    executable.write_text("#!/bin/sh\nexit 0\n")
    executable.chmod(0o755)
    return str(executable)


# ----- rendering ------------------------------------------------------------------------------


def test_default_socket_unit_listens_where_dbtkd_paths_puts_the_control_socket(
    user_home: Path, runtime_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    item = SystemdUnits(make_target(user_home, runtime_dir))
    socket_unit = item.files()[item.socket_path].decode()
    (listen,) = unit_settings(socket_unit)["Socket"]["ListenStream"]
    assert listen == "%t/db-toolkit/dbtkd.sock"

    uid = os.getuid()
    monkeypatch.setattr(paths, "_is_private_dir", lambda path, owner: True)
    expected = paths.runtime_paths(
        {"XDG_RUNTIME_DIR": f"/run/user/{uid}"}, None, platform="linux", uid=uid
    ).control_socket
    assert listen.replace("%t", f"/run/user/{uid}") == expected


def test_a_home_profile_renders_dbtk_home_under_a_unit_name_from_the_homes_hash(
    user_home: Path, runtime_dir: str, home: Path
) -> None:
    item = SystemdUnits(make_target(user_home, runtime_dir, home=str(home)))
    digest = hashlib.sha256(os.path.realpath(home).encode()).hexdigest()[:12]
    assert item.service_name == f"dbtkd-{digest}.service"
    assert item.socket_name == f"dbtkd-{digest}.socket"
    files = item.files()
    service_unit = unit_settings(files[item.service_path].decode())
    assert service_unit["Service"]["Environment"] == [f'"DBTK_HOME={home}"']
    assert service_unit["Unit"]["Requires"] == [item.socket_name]
    (listen,) = unit_settings(files[item.socket_path].decode())["Socket"]["ListenStream"]
    assert listen == paths.runtime_paths({}, str(home)).control_socket == f"{home}/run/dbtkd.sock"


def test_a_second_profile_never_overwrites_the_default_login_item(
    user_home: Path, runtime_dir: str, home: Path
) -> None:
    default = SystemdUnits(make_target(user_home, runtime_dir))
    profile = SystemdUnits(make_target(user_home, runtime_dir, home=str(home)))
    assert set(default.files()).isdisjoint(profile.files())


def test_units_carry_the_settings_the_login_item_needs(user_home: Path, runtime_dir: str) -> None:
    item = SystemdUnits(make_target(user_home, runtime_dir))
    files = item.files()
    unit = unit_settings(files[item.service_path].decode())["Service"]
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["KillMode"] == ["mixed"]
    assert unit["TimeoutStopSec"] == ["10"]
    executable = loginitem.daemon_executable()
    assert unit["ExecStart"] == [f'"{executable}" "--idle-exit" "0"']  # no idle exit
    assert os.path.isabs(executable)
    socket_unit = unit_settings(files[item.socket_path].decode())["Socket"]
    assert socket_unit["SocketMode"] == ["0600"]
    assert socket_unit["DirectoryMode"] == ["0700"]
    assert socket_unit["RemoveOnStop"] == ["yes"]


@pytest.mark.parametrize(
    "profile",
    ["default", "plain", 'spaces % $ quotes " and \\ backslash', "ünïcödé", "long"],
)
def test_every_rendered_unit_passes_systemd_analyze_verify_silently(
    profile: str, user_home: Path, runtime_dir: str, tmp_path: Path
) -> None:
    home = None
    if profile == "long":  # the control socket moves to the temp dir (paths fallback)
        home = str(tmp_path / ("h" * 90))
    elif profile != "default":
        home = str(tmp_path / profile)
    item = SystemdUnits(make_target(user_home, runtime_dir, home=home))
    if profile == "long":
        assert not item.control_socket().startswith(home or "")
    code, output = systemd_verify(write_units(item), runtime_dir, user_home)
    assert (code, output) == (0, "")


def test_exec_start_quoting_survives_a_path_that_needs_every_escape(
    user_home: Path, runtime_dir: str, tmp_path: Path
) -> None:
    # systemd-analyze checks that ExecStart's program exists: a quoting mistake fails here.
    item = SystemdUnits(make_target(user_home, runtime_dir, executable=odd_executable(tmp_path)))
    code, output = systemd_verify(write_units(item), runtime_dir, user_home)
    assert (code, output) == (0, "")


def test_the_same_path_without_escaping_fails_verification(
    user_home: Path, runtime_dir: str, tmp_path: Path
) -> None:
    executable = odd_executable(tmp_path)
    item = SystemdUnits(make_target(user_home, runtime_dir, executable=executable))
    units = write_units(item)
    service_path = Path(item.service_path)
    text = service_path.read_text()
    quoted = quote_word(executable, expand_dollar=False)
    service_path.write_text(text.replace(quoted, f'"{executable}"'))  # %h, not %%h
    code, output = systemd_verify(units, runtime_dir, user_home)
    assert code != 0
    assert "is not executable" in output


def test_a_broken_unit_fails_systemd_analyze_verify(
    user_home: Path, runtime_dir: str, tmp_path: Path
) -> None:
    item = SystemdUnits(make_target(user_home, runtime_dir))
    units = write_units(item)
    service_path = Path(item.service_path)
    good = service_path.read_text()

    service_path.write_text(good.replace("KillMode=mixed", "KillMod=mixed"))
    code, output = systemd_verify(units, runtime_dir, user_home)
    assert "Unknown key 'KillMod'" in output  # exit 0: this is why output must be empty too

    service_path.write_text(good.replace("ExecStart=", "ExecStart=/nonexistent/dbtkd #"))
    code, output = systemd_verify(units, runtime_dir, user_home)
    assert code != 0


@pytest.mark.parametrize("char", ["'", '"', "\\"])
def test_an_executable_path_systemd_would_refuse_is_refused_with_advice(
    char: str, user_home: Path, runtime_dir: str
) -> None:
    target = make_target(user_home, runtime_dir, executable=f"/opt/db{char}toolkit/dbtkd")
    with pytest.raises(ServiceError, match="install DB Toolkit in another directory"):
        SystemdUnits(target).files()


def test_a_path_with_a_newline_is_refused(user_home: Path, runtime_dir: str) -> None:
    item = SystemdUnits(make_target(user_home, runtime_dir, home="/tmp/evil\nExecStartPre=/x"))
    with pytest.raises(ServiceError, match="control character"):
        item.files()


def test_frozen_builds_render_the_dbtkd_executable_beside_dbtkctl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = tmp_path / "dist"
    dist.mkdir()
    for name in ("dbtkctl", "dbtkd"):
        (dist / name).write_text("#!/bin/sh\n")
        (dist / name).chmod(0o755)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(dist / "dbtkctl"))
    assert loginitem.daemon_executable() == str(dist / "dbtkd")


def test_source_installs_render_the_console_script_beside_the_interpreter() -> None:
    expected = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "dbtkd")
    assert loginitem.daemon_executable() == expected


def test_a_missing_dbtkd_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "dbtkctl"))
    with pytest.raises(ServiceError, match="cannot find the dbtkd executable"):
        loginitem.daemon_executable()


# ----- install / uninstall through the seam ---------------------------------------------------


def test_install_writes_both_units_then_reloads_and_enables_them_now(
    user_home: Path, runtime_dir: str, fake_os: FakeOS
) -> None:
    item = SystemdUnits(make_target(user_home, runtime_dir))
    fake_os.answer(SHOW, Completed(0, show_output(item, active=True, pid=4242)))
    document = service.install(item)
    assert fake_os.calls == [
        (*SYSTEMCTL, "daemon-reload"),
        (*SYSTEMCTL, "enable", "--now", "dbtkd.socket", "dbtkd.service"),
        (*SHOW, "dbtkd.service", "dbtkd.socket"),  # the status reported afterwards
    ]
    for path, content in item.files().items():
        assert Path(path).read_bytes() == content
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert document["status"]["installed"] is True
    assert document["status"]["login_item_pid"] == 4242


def test_installing_twice_rewrites_nothing_and_only_re_enables(
    user_home: Path, runtime_dir: str, fake_os: FakeOS
) -> None:
    item = SystemdUnits(make_target(user_home, runtime_dir))
    fake_os.answer(SHOW, Completed(0, show_output(item, active=True, pid=4242)))
    service.install(item)
    mtimes = {path: os.stat(path).st_mtime_ns for path in item.files()}
    fake_os.reset()
    document = service.install(item)
    assert document["changed"] == []
    assert fake_os.calls == [
        (*SHOW, "dbtkd.service", "dbtkd.socket"),
        (*SYSTEMCTL, "enable", "--now", "dbtkd.socket", "dbtkd.service"),
        (*SHOW, "dbtkd.service", "dbtkd.socket"),
    ]
    assert {path: os.stat(path).st_mtime_ns for path in item.files()} == mtimes


def test_a_changed_unit_is_reloaded_and_the_running_service_restarted(
    user_home: Path, runtime_dir: str, fake_os: FakeOS, tmp_path: Path
) -> None:
    old = SystemdUnits(make_target(user_home, runtime_dir))
    write_units(old)
    new = SystemdUnits(make_target(user_home, runtime_dir, executable=odd_executable(tmp_path)))
    fake_os.answer(SHOW, Completed(0, show_output(new, active=True, pid=4242)))
    service.install(new)
    assert fake_os.calls[1:-1] == [
        (*SYSTEMCTL, "daemon-reload"),
        (*SYSTEMCTL, "enable", "--now", "dbtkd.socket", "dbtkd.service"),
        (*SYSTEMCTL, "try-restart", "dbtkd.service"),
    ]


def test_dry_run_prints_files_and_commands_and_touches_nothing(
    user_home: Path, runtime_dir: str, fake_os: FakeOS, capsys: pytest.CaptureFixture[str]
) -> None:
    target = make_target(user_home, runtime_dir)
    document = service.install(SystemdUnits(target), dry_run=True)
    assert fake_os.calls == []
    assert not user_home.exists()
    ops = [step["op"] for step in document["steps"]]
    assert ops == ["write", "write", "run", "run"]
    assert document["steps"][-1]["argv"] == [
        *SYSTEMCTL,
        "enable",
        "--now",
        "dbtkd.socket",
        "dbtkd.service",
    ]


def test_a_failing_systemctl_is_reported_with_what_it_said(
    user_home: Path, runtime_dir: str, fake_os: FakeOS
) -> None:
    fake_os.answer((*SYSTEMCTL, "daemon-reload"), Completed(1, "", "Failed to connect to bus"))
    with pytest.raises(ServiceError, match="daemon-reload failed: Failed to connect to bus"):
        service.install(SystemdUnits(make_target(user_home, runtime_dir)))


def test_uninstall_removes_every_trace(user_home: Path, runtime_dir: str, fake_os: FakeOS) -> None:
    item = SystemdUnits(make_target(user_home, runtime_dir))
    fake_os.answer(SHOW, Completed(0, show_output(item, active=True, pid=4242)))
    service.install(item)
    for link, path in zip(item.wants_links, (item.service_path, item.socket_path), strict=True):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(path, link)  # what systemctl enable would have made
    fake_os.reset()
    document = service.uninstall(item)
    assert fake_os.calls == [
        (*SHOW, "dbtkd.service", "dbtkd.socket"),
        (*SYSTEMCTL, "disable", "--now", "dbtkd.socket", "dbtkd.service"),
        (*SYSTEMCTL, "daemon-reload"),
    ]
    assert document["was_installed"] is True
    left = [p for p in (*item.files(), *item.wants_links) if os.path.lexists(p)]
    assert left == []


def test_uninstall_without_a_service_manager_still_removes_the_files(
    user_home: Path, runtime_dir: str, fake_os: FakeOS
) -> None:
    item = SystemdUnits(make_target(user_home, runtime_dir))
    write_units(item)
    fake_os.answer(SYSTEMCTL, Completed(1, "", "Failed to connect to bus: No medium found"))
    document = service.uninstall(item)
    assert [p for p in item.files() if os.path.exists(p)] == []
    assert any("Failed to connect to bus" in warning for warning in document["warnings"])


def test_uninstalling_what_is_not_installed_runs_nothing(
    user_home: Path, runtime_dir: str, fake_os: FakeOS
) -> None:
    document = service.uninstall(SystemdUnits(make_target(user_home, runtime_dir)))
    assert document["was_installed"] is False
    assert fake_os.calls == []


def test_install_stops_a_daemon_started_on_demand_so_the_socket_unit_can_take_over(
    user_home: Path, runtime_dir: str, fake_os: FakeOS, home: Path, reaper: ProcessReaper
) -> None:
    daemon = reaper.start(home)
    item = SystemdUnits(make_target(user_home, runtime_dir, home=str(home)))
    document = service.install(item)
    assert {"op": "stop_daemon", "pid": daemon.pid} in document["steps"]
    wait_until(lambda: not pid_alive(daemon.pid), timeout=10, what="the on-demand daemon to exit")
    assert fake_os.calls[-2] == (*SYSTEMCTL, "enable", "--now", item.socket_name, item.service_name)


def test_status_tells_whether_the_running_daemon_is_the_login_items(
    user_home: Path, runtime_dir: str, fake_os: FakeOS, home: Path, reaper: ProcessReaper
) -> None:
    daemon = reaper.start(home)
    item = SystemdUnits(make_target(user_home, runtime_dir, home=str(home)))
    write_units(item)
    fake_os.answer(SHOW, Completed(0, show_output(item, active=True, pid=daemon.pid)))
    assert service.status(item)["daemon_from_login_item"] is True
    fake_os.answer(SHOW, Completed(0, show_output(item, active=False)))
    document = service.status(item)
    assert (document["daemon_pid"], document["daemon_from_login_item"]) == (daemon.pid, False)
