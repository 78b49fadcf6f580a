"""The backup directory's rules, without a daemon: labels, derived names, and no symlinks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dbtkd.app.backupfiles import (
    BackupDir,
    BackupFileError,
    LabelError,
    check_label,
    download_name,
)

BACKUP_ID = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("label", ["nightly", "Orders 2025-01-31 02:00", "ünïcödé", "a.b", "x . y"])
def test_labels_are_free_text(label: str) -> None:
    assert check_label(label) == label


@pytest.mark.parametrize(
    "label", ["../../evil", "a/b", "a\\b", "nul\x00", "..", "x..", "", "   ", None, 3, "x" * 201]
)
def test_path_like_or_empty_labels_are_refused(label: object) -> None:
    with pytest.raises(LabelError):
        check_label(label)


def test_download_names_are_tame() -> None:
    assert download_name("Orders: nightly/../x", ".sql.gz") == "Orders-nightly-..-x.sql.gz"
    assert download_name("...", ".dump") == "backup.dump"


def test_only_derived_names_are_accepted(tmp_path: Path) -> None:
    files = BackupDir(str(tmp_path))
    for name in ("../x", "x", f"{BACKUP_ID}/../../x", f"{BACKUP_ID}"):
        with pytest.raises(ValueError, match="derived"):
            files.create(name)
    fd = files.create(files.final_name(BACKUP_ID, ".sql.gz"))
    os.close(fd)
    assert os.listdir(tmp_path / "backups") == [f"{BACKUP_ID}.sql.gz"]
    assert (tmp_path / "backups").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "backups" / f"{BACKUP_ID}.sql.gz").stat().st_mode & 0o777 == 0o600


def test_a_symlink_in_place_of_a_file_is_never_followed(tmp_path: Path) -> None:
    files = BackupDir(str(tmp_path))
    target = tmp_path / "target"
    target.write_text("precious")
    (tmp_path / "backups").mkdir()
    link = tmp_path / "backups" / f"{BACKUP_ID}.dump"
    link.symlink_to(target)
    with pytest.raises(BackupFileError, match="symbolic link"):
        files.open_read(link.name)
    with pytest.raises(BackupFileError):
        files.create(link.name)  # O_EXCL: not even a new file through it
    partial = files.partial_name(BACKUP_ID)
    (tmp_path / "backups" / partial).symlink_to(target)
    with pytest.raises(BackupFileError):
        files.create(partial)
    files.remove(link.name)
    assert not link.is_symlink()
    assert target.read_text() == "precious"


def test_a_symlinked_backup_dir_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "backups").symlink_to(elsewhere)
    files = BackupDir(str(tmp_path))
    with pytest.raises(BackupFileError, match="symbolic link"):
        files.create(files.final_name(BACKUP_ID, ".dump"))
    assert os.listdir(elsewhere) == []


def test_sweep_removes_only_unclaimed_work_files(tmp_path: Path) -> None:
    files = BackupDir(str(tmp_path))
    names = [
        files.final_name(BACKUP_ID, ".dump"),
        files.partial_name(BACKUP_ID),
        files.partial_name(BACKUP_ID, "restore-abc"),
    ]
    for name in names:
        os.close(files.create(name))
    (tmp_path / "backups" / ".unrelated").write_text("")
    assert files.sweep({names[2]}) == [names[1]]
    assert sorted(os.listdir(tmp_path / "backups")) == sorted([".unrelated", names[0], names[2]])
