"""An environment problem (a read-only home, a file where a directory should be) stops the
daemon with one line saying what, where and what to do, and the DESIGN exit code; never a
traceback (issue 15, item 3). On 4ca2263 ``dbtkd`` on a read-only home ended in a traceback
from ``logfile.py`` (``OSError: [Errno 30]``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from tests.e2e.test_full_disk import needs_root, small_tmpfs
from tests.support import DBTKD, ProcessReaper, env_for, run_ctl


def run_dbtkd(home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DBTKD, "--home", str(home), "--port-range", "0"],
        env=env_for(home),
        capture_output=True,
        text=True,
        timeout=30,
    )


def assert_one_line(stderr: str, *parts: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for part in parts:
        assert part in lines[0], lines[0]


@needs_root
def test_a_read_only_home_is_one_line_and_exit_4(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with small_tmpfs(home, "1m", "0700"):
        subprocess.run(["mount", "-o", "remount,ro", str(home)], check=True, timeout=30)
        done = run_dbtkd(home)
        assert done.returncode == 4, done.stderr
        assert_one_line(done.stderr, "dbtkd: cannot use", str(home), "read-only", "--home")
        ctl = run_ctl(home, "port", "--json")
        assert ctl.code in (1, 4), ctl.err
        assert "Traceback" not in ctl.err
        assert "read-only" in ctl.json()["error"]


def test_a_file_where_the_log_directory_should_be(home: Path, reaper: ProcessReaper) -> None:
    (home / "logs").write_text("not a directory\n")
    done = run_dbtkd(home)
    assert done.returncode == 4, done.stderr
    assert_one_line(done.stderr, f"dbtkd: cannot use {home / 'logs'}", "move")
    # Through dbtkctl, as the app starts it: the same sentence, exit 4.
    ctl = run_ctl(home, "port", "--json", "--port-range", "0")
    reaper.track_home(home)
    assert ctl.code == 4, ctl.err
    assert f"cannot use {home / 'logs'}" in ctl.json()["error"]
    assert os.path.isfile(home / "logs")  # nothing was moved or removed


@needs_root
def test_a_full_home_is_one_line_naming_the_file_and_exit_4(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with small_tmpfs(home, "64k", "0700"):
        filler = home / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as file:
            while True:
                file.write(b"\0" * 4096)
        done = run_dbtkd(home)
        assert done.returncode == 4, done.stderr
        assert_one_line(done.stderr, f"dbtkd: cannot use {home}", "disk is full")
