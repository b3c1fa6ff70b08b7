"""build.py stops before an install that the disk cannot hold, naming the filesystem and the amounts, instead of
pip's "No space left on device" minutes into a download (which is how one CI run ended)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("tbsd_build_space", REPO / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

MB = 2**20


def test_a_need_beyond_the_free_space_stops_with_the_path_and_both_amounts(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(SystemExit) as stop:
        build.require_free_space({tmp_path / "not-yet" / ".venv-blender": free + 1024 * MB})
    message = str(stop.value)
    assert str(tmp_path) in message  # the nearest folder that exists stands for the one about to be made
    assert f"{(free + 1024 * MB) / 2**30:.1f} GB free" in message
    assert "GB is free" in message


def test_needs_on_one_filesystem_add_up(tmp_path: Path) -> None:
    half = shutil.disk_usage(tmp_path).free // 2 + 256 * MB
    with pytest.raises(SystemExit):
        build.require_free_space({tmp_path / "a": half, tmp_path / "b": half})


def test_needs_that_fit_pass(tmp_path: Path) -> None:
    quarter = shutil.disk_usage(tmp_path).free // 4
    assert build.require_free_space({tmp_path / "a": quarter, tmp_path / "b": quarter}) is None
    assert build.require_free_space({}) is None
