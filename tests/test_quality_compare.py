"""bench/quality_compare.py: the side-by-side tables in docs/METHODS.md and the cells where the paper's claim fails."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("quality_compare", ROOT / "bench" / "quality_compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(method: str, prompt: str, iou: float, colour: float, nearest: str, variant: str = "defaults") -> dict:
    return {"variant": variant, "preset": "standard", "representation": "nerf", "method": method, "prompt": prompt,
            "voxel_iou": iou, "colour_error_mean": colour, "nearest_colour": nearest, "wrong_colour_share": 0.0,
            "chamfer": 0.01, "components": 1, "seconds": {"train": 10.0}}


RUNS = [
    _run("tbsd", "a red cube", 0.90, 0.010, "red"),
    _run("sds", "a red cube", 0.95, 0.005, "red"),  # better on both: the claim fails here
    _run("csd", "a red cube", 0.85, 0.001, "red"),  # better colour, worse shape: the claim holds
    _run("tbsd", "a blue sphere", 0.97, 0.020, "blue"),
    _run("sds", "a blue sphere", 0.99, 0.300, "purple"),  # better shape, worse colour: the claim holds
    _run("csd", "a blue sphere", 0.97, 0.020, "blue"),  # the same colour is not better colour
]


def test_only_better_colour_at_equal_or_better_shape_counts_against_the_reference(compare):
    found = compare.better_than_reference(RUNS, "tbsd")
    assert [(r["method"], r["prompt"]) for r in found] == [("sds", "a red cube")]
    assert found[0]["reference"]["voxel_iou"] == 0.90


def test_tables_hold_every_method_and_prompt_and_name_the_failing_cell(compare):
    text = compare.tables(RUNS, "tbsd")
    assert "| a red cube | 0.90 / 0.010 | 0.95 / 0.005 | 0.85 / 0.001 |" in text
    assert "| a blue sphere | 0.97 / 0.020 | 0.99 / 0.300 (purple) | 0.97 / 0.020 |" in text  # wrong colour named
    assert "than TBSD: SDS on the red cube (0.950 / 0.005 against 0.900 / 0.010)." in text
    assert "| **TBSD** | nerf | 2 | 0.935 / 0.900 |" in text  # summary: median and min of the two prompts
    assert "named colour" in text and "| SDS | nerf | 2 |" in text and "| 1/2 |" in text


def test_results_load_from_a_study_or_a_committed_file_without_failed_or_variant_runs(compare, tmp_path):
    study = {"runs": RUNS[:3] + [{**RUNS[0], "error": "boom"}, {**RUNS[0], "variant": "lr2"}]}
    (tmp_path / "quality.json").write_text(json.dumps(study))
    (tmp_path / "gathered.json").write_text(json.dumps({"commit": "x", "studies": {"A": {"runs": RUNS[3:]}}}))
    rows = compare.load_runs([tmp_path / "quality.json", tmp_path / "gathered.json"])
    assert rows == RUNS


def test_committed_suite_results_give_the_methods_tables(compare):
    results = ROOT / "bench" / "results" / "quality"
    rows = compare.load_runs([results / "gpu_standard_methods_s9_h200x2.json", results / "gpu_standard_s8_h200x2.json"])
    assert sorted({r["method"] for r in rows}) == ["bridge", "bsd", "csd", "nfsd", "sds", "tbsd"]
    assert len(rows) == 6 * 2 * 12  # every method, both representations, the whole suite
    methods_doc = (ROOT / "docs" / "METHODS.md").read_text()
    for line in compare.tables(rows).splitlines():
        if line.startswith("| a ") or line.startswith("| an ") or line.startswith("Lower colour error"):
            assert line in methods_doc, line
