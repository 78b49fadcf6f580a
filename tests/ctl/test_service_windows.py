"""The Windows login item, on Linux: the task XML checked structurally, schtasks/reg exactly.

Nothing here has run on Windows; Task Scheduler's own validation is not available, so the
checks are the encoding, the schema version and namespace, and each setting issue 4 names.
"""

from __future__ import annotations

import codecs
import dataclasses
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dbtkctl.service import installer as service
from dbtkctl.service.oscmd import Completed
from dbtkctl.service.plan import ServiceError
from dbtkctl.service.windows import RUN_KEY, LogonTask
from tests.ctl.fake_os import FakeOS
from tests.ctl.service_support import install_fake_os, make_target, private_dir

NS = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}
EXE = r"C:\Program Files\DB Toolkit\resources\backend\dbtkd.exe"
TASK = "DBToolkit-dbtkd"


@pytest.fixture
def fake_os(monkeypatch: pytest.MonkeyPatch) -> FakeOS:
    return install_fake_os(monkeypatch)


@pytest.fixture
def task(tmp_path: Path) -> LogonTask:
    target = make_target(
        tmp_path / "Users" / "ann",
        private_dir(tmp_path / "rt"),
        executable=EXE,
        USERNAME="ann",
        USERDOMAIN="DESKTOP-7Q",
        LOCALAPPDATA=str(tmp_path / "AppData" / "Local"),
    )
    return LogonTask(target)


def task_xml(task: LogonTask) -> tuple[bytes, ET.Element]:
    (content,) = task.files().values()
    return content, ET.fromstring(content)


def text(root: ET.Element, path: str) -> str | None:
    element = root.find(path, NS)
    assert element is not None, f"missing {path}"
    return element.text


def test_the_task_file_is_utf16_with_a_byte_order_mark_and_says_so(task: LogonTask) -> None:
    content, _ = task_xml(task)
    assert content.startswith(codecs.BOM_UTF16_LE)
    decoded = content.decode("utf-16")
    assert decoded.startswith('<?xml version="1.0" encoding="UTF-16"?>\r\n')
    assert "\n" not in decoded.replace("\r\n", "")  # CRLF throughout, as Windows writes it


def test_the_task_is_schema_1_3_with_a_logon_trigger_for_the_current_user(task: LogonTask) -> None:
    _, root = task_xml(task)
    assert root.tag == f"{{{NS['t']}}}Task"
    assert root.get("version") == "1.3"
    triggers = root.findall("t:Triggers/*", NS)
    assert [t.tag.split("}")[1] for t in triggers] == ["LogonTrigger"]
    assert text(root, "t:Triggers/t:LogonTrigger/t:UserId") == r"DESKTOP-7Q\ann"
    assert text(root, "t:Principals/t:Principal/t:UserId") == r"DESKTOP-7Q\ann"
    assert text(root, "t:Principals/t:Principal/t:LogonType") == "InteractiveToken"
    assert text(root, "t:Principals/t:Principal/t:RunLevel") == "LeastPrivilege"
    principal = root.find("t:Principals/t:Principal", NS)
    assert principal is not None
    actions = root.find("t:Actions", NS)
    assert actions is not None
    assert actions.get("Context") == principal.get("id")


def test_the_task_runs_forever_once_and_on_battery(task: LogonTask) -> None:
    _, root = task_xml(task)
    assert text(root, "t:Settings/t:ExecutionTimeLimit") == "PT0S"
    assert text(root, "t:Settings/t:MultipleInstancesPolicy") == "IgnoreNew"
    assert text(root, "t:Settings/t:DisallowStartIfOnBatteries") == "false"
    assert text(root, "t:Settings/t:StopIfGoingOnBatteries") == "false"
    assert text(root, "t:Settings/t:Enabled") == "true"


def test_the_task_starts_dbtkd_directly_without_idle_exit(task: LogonTask) -> None:
    _, root = task_xml(task)
    execs = root.findall("t:Actions/t:Exec", NS)
    assert len(execs) == 1
    assert text(root, "t:Actions/t:Exec/t:Command") == EXE
    assert text(root, "t:Actions/t:Exec/t:Arguments") == "--idle-exit 0"


def test_a_home_profile_goes_on_the_command_line_under_its_own_task_name(
    task: LogonTask,
) -> None:
    home = r"C:\Users\ann\DB profiles\work & play"
    profile = LogonTask(dataclasses.replace(task.target, home=home))
    assert profile.name == f"{TASK}{profile.target.suffix}"
    _, root = task_xml(profile)
    assert text(root, "t:Actions/t:Exec/t:Arguments") == f'--home "{home}" --idle-exit 0'
    assert profile.xml_path != task.xml_path


def test_an_unknown_windows_user_is_a_clear_error(task: LogonTask) -> None:
    nobody = LogonTask(dataclasses.replace(task.target, env={}))
    with pytest.raises(ServiceError, match="USERNAME is not set"):
        nobody.files()


def test_install_registers_the_task_from_the_xml_and_runs_it_now(
    task: LogonTask, fake_os: FakeOS
) -> None:
    fake_os.answer(("schtasks", "/Query"), Completed(1, "", "ERROR: The system cannot find"))
    fake_os.answer(("reg", "query"), Completed(1, "", "ERROR: The system was unable to find"))
    document = service.install(task)
    assert fake_os.calls == [
        ("schtasks", "/Query", "/TN", TASK),
        ("reg", "query", RUN_KEY, "/v", TASK),
        ("schtasks", "/Create", "/TN", TASK, "/XML", task.xml_path, "/F"),
        ("schtasks", "/Run", "/TN", TASK),
        ("schtasks", "/Query", "/TN", TASK),  # status afterwards
        ("reg", "query", RUN_KEY, "/v", TASK),
    ]
    assert Path(task.xml_path).read_bytes() == task.files()[task.xml_path]
    assert document["fallback"] is False


def test_where_task_scheduler_refuses_install_falls_back_to_the_run_key(
    task: LogonTask, fake_os: FakeOS
) -> None:
    fake_os.answer(("schtasks",), Completed(1, "", "ERROR: Access is denied."))
    fake_os.answer(("reg", "query"), Completed(1, "", "ERROR: The system was unable to find"))
    document = service.install(task)
    assert fake_os.calls[2:4] == [
        ("schtasks", "/Create", "/TN", TASK, "/XML", task.xml_path, "/F"),
        ("reg", "add", RUN_KEY, "/v", TASK, "/t", "REG_SZ", "/d", f'"{EXE}" --idle-exit 0', "/f"),
    ]
    assert document["fallback"] is True
    assert "Access is denied" in document["warnings"][0]
    assert not os.path.exists(task.xml_path)


def test_installing_again_over_a_registered_task_does_nothing(
    task: LogonTask, fake_os: FakeOS
) -> None:
    fake_os.answer(("reg", "query"), Completed(1, "", "ERROR: The system was unable to find"))
    service.install(task)
    fake_os.reset()
    document = service.install(task)
    assert document["steps"] == []
    assert [call[:2] for call in fake_os.calls] == [("schtasks", "/Query"), ("reg", "query")] * 2


def test_uninstall_deletes_the_task_the_run_value_and_the_xml(
    task: LogonTask, fake_os: FakeOS
) -> None:
    fake_os.answer(("reg", "query"), Completed(1, "", "ERROR: The system was unable to find"))
    service.install(task)
    fake_os.answer(("reg", "query"), Completed(0, f"    {TASK}    REG_SZ    ..."))
    fake_os.reset()
    service.uninstall(task)
    assert fake_os.calls == [
        ("schtasks", "/Query", "/TN", TASK),
        ("reg", "query", RUN_KEY, "/v", TASK),
        ("schtasks", "/Delete", "/TN", TASK, "/F"),
        ("reg", "delete", RUN_KEY, "/v", TASK, "/f"),
    ]
    assert not os.path.exists(task.xml_path)


def test_dry_run_shows_the_fallback_and_changes_nothing(task: LogonTask, fake_os: FakeOS) -> None:
    fake_os.answer(("schtasks", "/Query"), Completed(1, "", "ERROR: The system cannot find"))
    fake_os.answer(("reg", "query"), Completed(1, "", "ERROR: The system was unable to find"))
    document = service.install(task, dry_run=True)
    assert [call[:2] for call in fake_os.calls] == [("schtasks", "/Query"), ("reg", "query")]
    assert not os.path.exists(task.xml_path)
    create = document["steps"][-1]
    assert create["argv"][:2] == ["schtasks", "/Create"]
    assert [step["op"] for step in create["fallback"]] == ["remove", "run"]
    assert create["fallback"][1]["argv"][:3] == ["reg", "add", RUN_KEY]
