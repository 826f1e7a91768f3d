"""Result files are written whole or not at all, with the permissions a plain open() gives."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from l2bn.errors import ConfigError
from l2bn.files import atomic_open, check_writable, write_json


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_get_the_umask_mode_not_mkstemps_0600(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        write_json(tmp_path / "r.json", {"k": 1})
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    got = stat.S_IMODE((tmp_path / "r.json").stat().st_mode)
    assert got == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    write_json(out, {"v": "old"})
    with pytest.raises(ValueError), atomic_open(out) as f:
        f.write('{"v": "half')
        raise ValueError("interrupted")
    assert out.read_text() == '{\n  "v": "old"\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_nan_is_refused_before_anything_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    write_json(out, {"v": 1.0})
    with pytest.raises(ValueError):
        write_json(out, {"v": float("nan")})
    assert '"v": 1.0' in out.read_text()
    assert len(list(tmp_path.iterdir())) == 1


def test_check_writable_names_the_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        check_writable(tmp_path / "no" / "r.json")
    with pytest.raises(ConfigError, match="is a folder"):
        check_writable(tmp_path)
