"""The modes given to files and folders written through temporary names follow the umask."""

from __future__ import annotations

import os

import pytest

from facerestore.file_modes import current_umask, new_file_mode, new_folder_mode


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_modes_follow_the_umask_as_open_and_mkdir_would(tmp_path, mask):
    old = os.umask(mask)
    try:
        assert current_umask() == mask
        (tmp_path / "f").touch()
        (tmp_path / "d").mkdir()
        assert new_file_mode() == (tmp_path / "f").stat().st_mode & 0o777
        assert new_folder_mode() == (tmp_path / "d").stat().st_mode & 0o777
    finally:
        os.umask(old)
