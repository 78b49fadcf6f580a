"""The daemon's lifecycle, run against the frozen build (``DBTK_BIN_DIR``).

``tests/support.py`` points ``DBTKD`` and ``DBTKCTL`` at ``$DBTK_BIN_DIR``, so the lifecycle
tests imported below from ``tests/ctl`` and ``tests/daemon`` (start, port, the 50-way race,
worker crash, stop, status, logs) run here unchanged against the frozen executables; importing
them is what puts them in the frozen pass. The tests defined here check what only a frozen build
can get wrong: that supervisor and worker are the bundle's ``dbtkd`` with no Python
installation behind them, that ``dbtkctl`` finds its sibling ``dbtkd``, and that the login item
it writes starts the frozen ``dbtkd`` with the templates bundled in ``_internal/service``.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest

from tests.frozen.bundle import FROZEN, INTERNAL, REPO, SKIP_REASON, python_free_env
from tests.support import DBTKCTL, DBTKD, Daemon, ProcessReaper, comm, env_for, run_ctl

if not FROZEN:
    pytest.skip(SKIP_REASON, allow_module_level=True)

# Imported after the skip, so that the source pass never depends on these names (a renamed test
# breaks only the frozen pass, which then says which one).
from tests.ctl.test_cli import (
    spawned,
    test_commands_against_a_stopped_daemon_have_honest_exit_codes,
    test_fifty_racing_port_calls_start_exactly_one_daemon,
    test_json_failures_still_print_exactly_one_document,
    test_logs_reads_the_file_even_when_the_daemon_is_stopped,
    test_port_json_has_the_documented_fields,
    test_port_prints_only_the_port_and_a_newline,
    test_port_starts_a_detached_daemon_and_returns_at_once_to_a_capturing_caller,
    test_port_warns_when_the_running_daemon_has_other_settings,
    test_restart_replaces_the_worker_and_keeps_port_and_token,
    test_spawned_daemon_environment_has_no_systemd_handover_variables,
    test_stale_state_after_kill_9_of_both_processes_heals_on_the_next_port,
    test_start_failure_exits_4_with_the_reason_the_log_path_and_the_last_lines,
    test_start_reports_a_running_daemon_without_starting_another,
    test_status_json_reports_everything_but_the_token,
    test_stop_stops_a_spawned_daemon_and_its_worker,
    test_url_prints_the_loopback_address_not_localhost,
    test_usage_errors_exit_2,
    test_version_reports_client_and_daemon,
)
from tests.daemon.test_supervisor import (
    health,
    test_a_home_too_long_for_a_socket_path_moves_only_the_socket,
    test_a_socket_file_left_by_a_dead_daemon_is_replaced,
    test_config_file_is_read_and_flags_beat_environment_beat_file,
    test_exhausted_port_range_exits_4_naming_the_range_and_the_fix,
    test_foreground_daemon_announces_its_port_only_once_the_worker_answers,
    test_log_rotates_at_the_configured_size_keeping_the_configured_count,
    test_second_daemon_for_the_same_home_refuses_and_leaves_the_first_alone,
    test_signal_stops_the_daemon_within_five_seconds_and_cleans_up,
    test_state_files_are_private_complete_and_never_hold_the_token,
    test_stop_removes_its_files_but_keeps_last_port,
    test_the_port_in_last_port_is_preferred_over_the_start_of_the_range,
    test_token_reaches_the_worker_through_its_pipe_not_argv_or_environment,
    test_unknown_config_key_is_an_error_naming_it,
    test_worker_exits_within_a_second_when_the_supervisor_is_killed,
    test_worker_killed_with_sigkill_is_replaced_on_the_same_port_without_refusals,
    test_worker_runs_in_its_own_process_group_and_ignores_sigterm,
)
from tests.daemon.test_zygote import (
    forking,
    test_a_killed_worker_is_forked_again_on_the_same_port,
    test_a_killed_zygote_takes_its_worker_and_a_new_pair_serves,
    zygote_of,
)

# The lifecycle tests of the source pass, collected here again for the frozen executables.
__all__ = [
    "forking",
    "spawned",
    "test_a_home_too_long_for_a_socket_path_moves_only_the_socket",
    "test_a_killed_worker_is_forked_again_on_the_same_port",
    "test_a_killed_zygote_takes_its_worker_and_a_new_pair_serves",
    "test_a_socket_file_left_by_a_dead_daemon_is_replaced",
    "test_commands_against_a_stopped_daemon_have_honest_exit_codes",
    "test_config_file_is_read_and_flags_beat_environment_beat_file",
    "test_exhausted_port_range_exits_4_naming_the_range_and_the_fix",
    "test_fifty_racing_port_calls_start_exactly_one_daemon",
    "test_foreground_daemon_announces_its_port_only_once_the_worker_answers",
    "test_json_failures_still_print_exactly_one_document",
    "test_log_rotates_at_the_configured_size_keeping_the_configured_count",
    "test_logs_reads_the_file_even_when_the_daemon_is_stopped",
    "test_port_json_has_the_documented_fields",
    "test_port_prints_only_the_port_and_a_newline",
    "test_port_starts_a_detached_daemon_and_returns_at_once_to_a_capturing_caller",
    "test_port_warns_when_the_running_daemon_has_other_settings",
    "test_restart_replaces_the_worker_and_keeps_port_and_token",
    "test_second_daemon_for_the_same_home_refuses_and_leaves_the_first_alone",
    "test_signal_stops_the_daemon_within_five_seconds_and_cleans_up",
    "test_spawned_daemon_environment_has_no_systemd_handover_variables",
    "test_stale_state_after_kill_9_of_both_processes_heals_on_the_next_port",
    "test_start_failure_exits_4_with_the_reason_the_log_path_and_the_last_lines",
    "test_start_reports_a_running_daemon_without_starting_another",
    "test_state_files_are_private_complete_and_never_hold_the_token",
    "test_status_json_reports_everything_but_the_token",
    "test_stop_removes_its_files_but_keeps_last_port",
    "test_stop_stops_a_spawned_daemon_and_its_worker",
    "test_the_port_in_last_port_is_preferred_over_the_start_of_the_range",
    "test_token_reaches_the_worker_through_its_pipe_not_argv_or_environment",
    "test_unknown_config_key_is_an_error_naming_it",
    "test_url_prints_the_loopback_address_not_localhost",
    "test_usage_errors_exit_2",
    "test_version_reports_client_and_daemon",
    "test_worker_exits_within_a_second_when_the_supervisor_is_killed",
    "test_worker_killed_with_sigkill_is_replaced_on_the_same_port_without_refusals",
    "test_worker_runs_in_its_own_process_group_and_ignores_sigterm",
]


# The C library and friends come from the OS; everything Python comes from _internal/.
SYSTEM_LIBRARY_DIRS = ("/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/")


def mapped_files(pid: int) -> set[str]:
    """Every file mapped into ``pid``: its executable, shared libraries, extension modules."""
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            found.add(parts[5].removesuffix(" (deleted)"))
    return found


def assert_runs_only_the_bundle(pid: int) -> None:
    """``pid`` is the frozen dbtkd, and maps no Python but the bundle's."""
    assert os.readlink(f"/proc/{pid}/exe") == os.path.realpath(DBTKD)
    internal = os.path.realpath(INTERNAL) + os.sep
    outside = set()
    for path in mapped_files(pid):
        if path.startswith(internal):
            continue
        shared_library = path.endswith(".so") or ".so." in path
        if "python" in os.path.basename(path).lower() or (
            shared_library and not path.startswith(SYSTEM_LIBRARY_DIRS)
        ):
            outside.add(path)
    assert not outside, f"pid {pid} maps files from outside the bundle: {sorted(outside)}"
    for prefix in {sys.prefix, sys.base_prefix, str(REPO / ".venv")}:
        leaked = [p for p in mapped_files(pid) if p.startswith(prefix + os.sep)]
        assert not leaked, f"pid {pid} uses the test interpreter's files: {leaked}"


def test_supervisor_and_worker_are_the_frozen_dbtkd_and_use_no_python_installation(
    daemon: Daemon,
) -> None:
    worker = daemon.worker_pid
    assert_runs_only_the_bundle(daemon.pid)
    assert_runs_only_the_bundle(worker)
    cmdline = Path(f"/proc/{worker}/cmdline").read_bytes().split(b"\0")[:-1]
    assert [part.decode() for part in cmdline[:3]] == [DBTKD, "_worker", "--reply-fd"]


def test_the_frozen_zygote_is_the_bundle_and_forks_the_worker(forking: Daemon) -> None:
    mother = zygote_of(forking)
    assert_runs_only_the_bundle(mother)
    # Forked from the supervisor: the bundle's command line, and its own name.
    cmdline = Path(f"/proc/{mother}/cmdline").read_bytes().split(b"\0")[:-1]
    assert cmdline[0].decode() == DBTKD
    assert comm(mother) == "dbtkd-zygote"
    assert forking.http("GET", "/api/v1/health")[0] == 200


def test_frozen_dbtkctl_starts_its_sibling_dbtkd_with_no_python_on_path(
    home: Path, reaper: ProcessReaper
) -> None:
    env = python_free_env(env_for(home))
    result = run_ctl(home, "port", "--json", "--port-range", "0", env=env)
    reaper.track_home(home)
    assert result.code == 0, result.err
    document = result.json()
    assert document["started"] is True
    assert health(document["port"]) == 200
    assert_runs_only_the_bundle(document["pid"])
    assert Path(f"/proc/{document['pid']}/environ").read_bytes().find(b"VIRTUAL_ENV=") == -1


def test_service_dry_run_points_the_login_item_at_the_frozen_dbtkd(
    home: Path, tmp_path: Path
) -> None:
    user_home = tmp_path / "user"
    user_home.mkdir()
    env = python_free_env(env_for(home, HOME=str(user_home)))
    result = run_ctl(home, "service", "install", "--dry-run", "--json", env=env)
    assert result.code == 0, result.err
    plan = result.json()
    assert plan["dry_run"] is True
    written = {step["path"]: step["content"] for step in plan["steps"] if step["op"] == "write"}
    assert written, plan
    commands = [
        shlex.split(line.removeprefix("ExecStart="))
        for content in written.values()
        for line in content.splitlines()
        if line.startswith("ExecStart=")
    ]
    assert [command[0] for command in commands] == [DBTKD], commands
    assert list(user_home.iterdir()) == []  # a dry run writes nothing


def test_service_templates_in_the_bundle_match_the_source_tree() -> None:
    source = REPO / "service"
    templates = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
    assert templates
    for relative in templates:
        bundled = INTERNAL / "service" / relative
        assert bundled.is_file(), f"{relative} is not in the bundle: rebuild it"
        assert bundled.read_bytes() == (source / relative).read_bytes(), (
            f"{relative} in the bundle is older than the source: run ./build-backend.sh"
        )


def test_frozen_dbtkctl_version_matches_the_source() -> None:
    from dbtkd import __version__

    result = run_ctl(Path("/nonexistent"), "version", "--json")
    assert result.code in (0, 3), result.err
    assert json.loads(result.out)["client"]["version"] == __version__
    assert Path(DBTKCTL).parent == Path(DBTKD).parent
