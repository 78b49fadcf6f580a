"""Every dbtkctl command, with ``--json`` and as text, with the daemon running and stopped: the
exit code DESIGN gives, exactly one JSON document on stdout with ``--json`` (also for usage
errors), and nothing on stderr when it succeeds (issue 15, items 5 and 6). On 4ca2263
``dbtkctl --json frobnicate`` printed argparse's text, ``logs -f --json`` plain lines,
``start --json`` a null token, ``restart`` of a stopped daemon exited 3 and
``stop --timeout -1`` exited 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import ProcessReaper, run_ctl

# Commands that may start a daemon get a free port, never the default range.
SPAWNS = ("--port-range", "0")
# command line, exit code when running, exit code when stopped
COMMANDS: list[tuple[tuple[str, ...], int, int]] = [
    (("port", *SPAWNS), 0, 0),
    (("port", "--no-start"), 0, 3),
    (("url", *SPAWNS), 0, 0),
    (("start", *SPAWNS), 0, 0),
    (("restart", *SPAWNS), 0, 0),
    (("status",), 0, 3),
    (("logs", "-n", "5"), 0, 0),
    (("version",), 0, 0),
    (("service", "status"), 0, 0),
    (("stop",), 0, 0),
]


def set_state(home: Path, running: bool, reaper: ProcessReaper) -> None:
    if running:
        assert run_ctl(home, "port", *SPAWNS).code == 0
        reaper.track_home(home)
    else:
        assert run_ctl(home, "stop").code == 0


@pytest.mark.parametrize("running", [True, False], ids=["running", "stopped"])
@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
def test_every_command_keeps_its_promises(
    home: Path, reaper: ProcessReaper, running: bool, as_json: bool
) -> None:
    for argv, code_running, code_stopped in COMMANDS:
        set_state(home, running, reaper)
        result = run_ctl(home, *argv, *(["--json"] if as_json else []))
        reaper.track_home(home)
        expected = code_running if running else code_stopped
        shown = f"dbtkctl {' '.join(argv)}: {result.code}\n{result.out}\n{result.err}"
        assert result.code == expected, shown
        if as_json:
            document = json.loads(result.out)  # exactly one document: loads refuses more
            assert isinstance(document, dict), shown
            if result.code not in (0, 3):
                assert document["exit_code"] == result.code
        if result.code == 0 or argv[0] == "status":  # status describes "stopped" too
            assert result.err == "", shown
            assert result.out.strip(), shown
        else:
            assert result.err.strip(), shown  # the reason, for a person
    run_ctl(home, "stop")


@pytest.mark.parametrize(
    "argv",
    [
        ("frobnicate",),
        ("stop", "--timeout", "-1"),
        ("stop", "--timeout", "soon"),
        ("logs", "-n", "-3"),
        ("port", "--idle-exit", "ten"),
        ("service", "reinstall"),
        ("--json", "status", "--bogus"),
    ],
)
def test_usage_errors_are_exit_2_and_one_json_document(home: Path, argv: tuple[str, ...]) -> None:
    result = run_ctl(home, *argv, "--json")
    assert result.code == 2, result
    document = json.loads(result.out)
    assert document["exit_code"] == 2
    assert document["error"]
    assert document["error"] in result.err  # the same sentence for a person
    assert run_ctl(home, "status").code == 3  # nothing was started


def test_start_json_has_the_token_like_port_json(home: Path, reaper: ProcessReaper) -> None:
    started = run_ctl(home, "start", *SPAWNS, "--json")
    reaper.track_home(home)
    assert started.code == 0, started.err
    port = run_ctl(home, "port", "--json").json()
    assert started.json()["token"] == port["token"]
    assert started.json()["token"]


def test_logs_follow_json_is_json_lines(home: Path, reaper: ProcessReaper) -> None:
    assert run_ctl(home, "port", *SPAWNS).code == 0
    reaper.track_home(home)
    assert run_ctl(home, "stop").code == 0
    # Not running: the file's lines, each its own JSON document, then the command ends.
    result = run_ctl(home, "logs", "-f", "-n", "3", "--json")
    assert result.code == 0
    lines = result.out.splitlines()
    assert len(lines) == 3
    assert all(set(json.loads(line)) == {"line"} for line in lines)
