"""The 2D experiment on the procedural prior: every method must draw the prompted object.

Thresholds come from the world itself rather than from a run: a result passes when its
silhouette is closer to the prompted shape than any other catalogue shape's silhouette is
(``IoU > max IoU(other shape, truth)`` plus half the remaining gap), and when its mean colour
is nearer the true colour than half the distance to the nearest other catalogue colour.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backend.image2d import optimise_image
from backend.images import load_png
from backend.metrics import colour_error, silhouette_iou
from backend.priors.procedural.prior import ProceduralPrior
from backend.priors.procedural.world import COLOURS, SHAPES, ground_truth
from backend.scene.cameras import front_view
from shared.settings import METHODS, validate

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red cube"


@pytest.fixture(scope="module")
def prior() -> ProceduralPrior:
    return ProceduralPrior()


@pytest.fixture(scope="module")
def truth(prior):
    return ground_truth(PROMPT, front_view(1), prior.resolution)[0][0]


@pytest.fixture(scope="module")
def thresholds(prior, truth):
    others = [ground_truth(f"a red {s}", front_view(1), prior.resolution)[0][0] for s in SHAPES if s != "cube"]
    best_other_iou = max(silhouette_iou(o, truth) for o in others)
    other_colours = [ground_truth(f"a {c} cube", front_view(1), prior.resolution)[0][0] for c in COLOURS if c != "red"]
    nearest_colour = min(colour_error(o, truth) for o in other_colours)
    return {"iou": best_other_iou + 0.5 * (1 - best_other_iou), "colour": 0.5 * nearest_colour}


def test_thresholds_are_meaningful(thresholds):
    # The world must separate shapes and colours for the thresholds to mean anything.
    assert 0.6 < thresholds["iou"] < 0.97
    assert 0.05 < thresholds["colour"] < 0.5


@pytest.mark.parametrize("method", METHODS)
def test_method_draws_the_prompted_object(method, prior, truth, thresholds):
    run = optimise_image(prior, PROMPT, validate({"method": method}))
    assert torch.isfinite(run.image).all()
    iou = silhouette_iou(run.image, truth)
    err = colour_error(run.image, truth)
    assert iou > thresholds["iou"], f"{method}: silhouette IoU {iou:.3f} <= {thresholds['iou']:.3f}"
    assert err < thresholds["colour"], f"{method}: colour error {err:.3f} >= {thresholds['colour']:.3f}"


def test_wrong_prompt_fails_the_same_check(prior, truth, thresholds):
    # The check above can fail: a run for another object does not pass it.
    run = optimise_image(prior, "a blue sphere", validate({"method": "sds", "image_steps": 200}))
    assert silhouette_iou(run.image, truth) < thresholds["iou"] or colour_error(run.image, truth) > thresholds["colour"]


def test_seed_repeats_a_run(prior):
    settings = validate({"method": "tbsd", "image_steps": 30, "seed": 7})
    a = optimise_image(prior, PROMPT, settings).image
    b = optimise_image(prior, PROMPT, settings).image
    c = optimise_image(prior, PROMPT, validate({"method": "tbsd", "image_steps": 30, "seed": 8})).image
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_tbsd_mgda_weight_traced(prior):
    run = optimise_image(prior, PROMPT, validate({"method": "tbsd", "image_steps": 40}))
    mus = [r["mgda_weight"] for r in run.trace]
    factors = [r["tbsd_factor"] for r in run.trace]
    assert all(0.0 <= m <= 1.0 for m in mus)
    assert factors[0] > factors[-1] or factors[0] == factors[-1] == validate({})["tbsd_gamma"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_cli_image_writes_png_and_record(tmp_path, truth, thresholds):
    out = tmp_path / "cube.png"
    proc = _cli("image", PROMPT, "--out", str(out), "--method", "tbsd", "--seed", "3", "--quiet")
    assert proc.returncode == 0, proc.stderr
    image = load_png(out)
    assert image.shape == (3, 64, 64)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["settings"]["method"] == "tbsd"
    assert record["settings"]["seed"] == 3
    assert record["settings"]["image_steps"] == validate({})["image_steps"]
    assert record["figures"]["silhouette_iou"] > thresholds["iou"]
    assert set(record["trace_summary"]) == {"start", "middle", "end"}
    assert 0 <= record["trace_summary"]["end"]["mgda_weight"] <= 1


def test_cli_rejects_unknown_word_and_bad_setting(tmp_path):
    proc = _cli("image", "a red hat", "--out", str(tmp_path / "x.png"), "--quiet")
    assert proc.returncode == 2
    assert "'hat'" in proc.stderr and "cube" in proc.stderr and "red" in proc.stderr
    proc = _cli("image", PROMPT, "--out", str(tmp_path / "x.png"), "--tbsd-alpha", "-1", "--quiet")
    assert proc.returncode == 2
    assert "tbsd_alpha" in proc.stderr and "range" in proc.stderr
    assert not (tmp_path / "x.png").exists()
