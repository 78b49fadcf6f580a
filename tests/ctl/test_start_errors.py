"""Whatever stops a daemon from starting reaches the person who ran dbtkctl (or the app) in the
daemon's own words, and ``dbtkctl status`` still says it afterwards; one configuration parser
decides every key for daemons started on demand too (issue 15, items 1 and 2).

On 4ca2263 a bad ``dbtkd.toml`` gave "dbtkd exited with status 2 while starting" and "the log
is empty": the sentence went to the spawned daemon's stderr, which was /dev/null; and dbtkctl
always passed ``--idle-exit 600``, so ``DBTK_IDLE_EXIT`` and the file's ``idle_exit`` were
ignored for the daemons it started.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dbtkd.paths import data_paths
from tests.support import ProcessReaper, env_for, run_ctl


def config_file(home: Path, text: str) -> None:
    path = Path(data_paths(env_for(home), str(home)).config_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize(
    ("text", "sentence"),
    [
        ('log_level = "debug\n', "Illegal character '\\n' (at line 1, column 19)"),
        ('log_levle = "debug"\n', "unknown key 'log_levle'; known keys: port_range"),
        ('idle_exit = "ten"\n', "idle_exit: expected a positive number of seconds, got 'ten'"),
        ("watchdog_timeout = -1\n", "watchdog_timeout: expected a positive number of seconds"),
    ],
)
def test_a_bad_config_file_is_reported_in_the_daemons_words_now_and_by_status(
    home: Path, reaper: ProcessReaper, text: str, sentence: str
) -> None:
    config_file(home, text)
    result = run_ctl(home, "port", "--json", "--port-range", "0")
    reaper.track_home(home)
    assert result.code == 4, result.err
    assert sentence in result.json()["error"]  # what Electron's ensureBackend() shows
    assert "dbtkd.toml" in result.json()["error"]
    assert sentence in result.err
    assert "exited with status 2 while starting: " in result.err

    status = run_ctl(home, "status", "--json")
    assert status.code == 3
    assert any(sentence in line for line in status.json()["last_start_error"])
    text_status = run_ctl(home, "status")
    assert "the last start failed; dbtkd said:" in text_status.out
    assert sentence in text_status.out

    # Fixed, the next start succeeds and the old words are gone.
    config_file(home, "")
    assert run_ctl(home, "port", "--port-range", "0").code == 0
    assert run_ctl(home, "stop").code == 0
    assert run_ctl(home, "status", "--json").json()["last_start_error"] is None


@pytest.mark.parametrize("value", ["ten", "-5", "0x10"])
def test_a_bad_idle_exit_flag_is_a_usage_error_before_anything_starts(
    home: Path, value: str
) -> None:
    result = run_ctl(home, "port", f"--idle-exit={value}", "--json")
    assert result.code == 2, result.err
    assert "--idle-exit: expected a positive number of seconds" in result.json()["error"]
    assert run_ctl(home, "status").code == 3  # nothing was started


@pytest.mark.parametrize(
    ("flag", "env", "file", "expected"),
    [
        (None, None, None, 600.0),  # on demand, nothing set: DESIGN's 10 minutes
        (None, None, "idle_exit = 45", 45.0),
        (None, "30", "idle_exit = 45", 30.0),
        ("20", "30", "idle_exit = 45", 20.0),
        (None, None, 'idle_exit = "off"', None),  # the file may turn it off
    ],
)
def test_idle_exit_of_a_daemon_started_on_demand_follows_flag_env_file(
    home: Path,
    reaper: ProcessReaper,
    flag: str | None,
    env: str | None,
    file: str | None,
    expected: float | None,
) -> None:
    if file is not None:
        config_file(home, file + "\n")
    extra = {"DBTK_IDLE_EXIT": env} if env is not None else {}
    args = ["port", "--port-range", "0", *(["--idle-exit", flag] if flag else [])]
    result = run_ctl(home, *args, env=env_for(home, **extra))
    reaper.track_home(home)
    assert result.code == 0, result.err
    assert run_ctl(home, "status", "--json").json()["idle_exit"] == expected
