"""Path rules from the shared fixture (also checked by the Electron module's tests)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from dbtkd import paths
from dbtkd.errors import StartFailed

FIXTURE = Path(__file__).parent.parent / "fixtures" / "paths.json"
CASES = json.loads(FIXTURE.read_text())["cases"]


def expected_value(case: dict[str, Any], key: str) -> str:
    value: str = case["expected"][key]
    if "HASH" in value:
        digest = hashlib.sha256(case["hash_input"].encode()).hexdigest()[:12]
        value = value.replace("HASH", digest)
    return value


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_runtime_paths_follow_the_shared_fixture(
    case: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    private = set(case["private_dirs"])
    monkeypatch.setattr(paths, "_is_private_dir", lambda path, uid: path in private)
    monkeypatch.setattr(
        os.path, "expanduser", lambda p: p.replace("~", case["env"].get("HOME", "/home/ann"), 1)
    )
    result = paths.runtime_paths(
        case["env"], platform=case["platform"], uid=case["uid"], sid=case.get("sid")
    )
    for key in case["expected"]:
        assert getattr(result, key) == expected_value(case, key), key


def test_private_dir_check_refuses_symlinks_foreign_owners_and_loose_modes(
    tmp_path: Path,
) -> None:
    uid = os.getuid()
    good = tmp_path / "good"
    good.mkdir(mode=0o700)
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o755)
    link = tmp_path / "link"
    link.symlink_to(good)
    assert paths._is_private_dir(str(good), uid)
    assert not paths._is_private_dir(str(loose), uid)
    assert not paths._is_private_dir(str(link), uid)
    assert not paths._is_private_dir(str(good), uid + 1)
    assert not paths._is_private_dir(str(tmp_path / "missing"), uid)


def test_ensure_private_dir_tightens_the_mode_and_refuses_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "run"
    target.mkdir()
    target.chmod(0o755)
    paths.ensure_private_dir(str(target))
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    link = tmp_path / "evil"
    link.symlink_to(target)
    with pytest.raises(StartFailed, match="not a directory"):
        paths.ensure_private_dir(str(link))


def test_data_paths_with_a_home_are_plain_subdirectories() -> None:
    data = paths.data_paths({}, "/h")
    assert (data.log_file, data.data_dir, data.config_file, data.last_port_file) == (
        "/h/logs/dbtkd.log",
        "/h/data",
        "/h/config/dbtkd.toml",
        "/h/state/last-port",
    )


def test_data_paths_without_a_home_follow_platformdirs() -> None:
    import platformdirs

    data = paths.data_paths({}, None)
    assert data.log_dir == platformdirs.user_log_dir("db-toolkit", appauthor=False)
    assert data.data_dir == platformdirs.user_data_dir("db-toolkit", appauthor=False)
