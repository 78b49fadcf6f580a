"""``dbtkd.proctree``: the tree under a pid from ``/proc``, and kills that never reach a
reused pid. The walk is a pure function (tested on a made-up table); reading and killing use
real processes this test starts."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from dbtkd import proctree
from dbtkd.proctree import Proc
from tests.support import pid_alive, wait_until

pytestmark = pytest.mark.skipif(not proctree.LINUX, reason="/proc is Linux's")


def row(pid: int, ppid: int, state: str = "S") -> Proc:
    return Proc(pid, ppid, pgrp=pid, session=pid, state=state, start_ticks=pid * 10, name="p")


def test_descendants_follow_parent_links_to_any_depth_and_stay_under_the_root() -> None:
    table = {p.pid: p for p in [row(1, 0), row(10, 1), row(11, 10), row(12, 11), row(13, 10)]}
    table |= {p.pid: p for p in [row(20, 1), row(21, 20, state="Z")]}  # a sibling tree
    assert sorted(p.pid for p in proctree.descendants(table, 10)) == [11, 12, 13]
    assert sorted(p.pid for p in proctree.descendants(table, 20)) == [21]
    assert proctree.descendants(table, 12) == []
    assert [p.pid for p in proctree.children_of(table, 1)] == [10, 20]
    assert [p.exited for p in proctree.descendants(table, 20)] == [True]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    # Its command name holds ") (" and spaces, which a naive /proc/PID/stat split gets wrong.
    code = "import sys,time; open('/proc/self/comm','w').write('a) (b c'); print(); time.sleep(600)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # its name is set
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_a_process_is_read_with_its_parent_group_session_and_odd_name(
    sleeper: subprocess.Popen[bytes],
) -> None:
    proc = proctree.read(sleeper.pid)
    assert proc is not None
    assert (proc.name, proc.ppid, proc.pgrp, proc.session) == (
        "a) (b c",
        os.getpid(),
        sleeper.pid,
        sleeper.pid,
    )
    # The state letter may change between two reads (R while it prints, S once asleep).
    seen = proctree.snapshot()[sleeper.pid]
    assert (seen.ppid, seen.start_ticks, seen.name) == (proc.ppid, proc.start_ticks, proc.name)
    assert proctree.read(2**22 + 1) is None  # above any pid_max: no such process


def test_kill_never_signals_a_pid_that_now_belongs_to_another_process(
    sleeper: subprocess.Popen[bytes],
) -> None:
    proc = proctree.read(sleeper.pid)
    assert proc is not None
    # The row of an earlier process that had the same pid: another start time.
    earlier = proc._replace(start_ticks=proc.start_ticks - 1)
    assert proctree.kill(earlier) is False
    assert pid_alive(sleeper.pid)
    assert proctree.kill(proc) is True
    wait_until(lambda: sleeper.poll() is not None, 5, what="the sleeper to die")
    assert sleeper.returncode == -9
    assert proctree.kill(proc) is False  # reaped: nothing of that process is left
