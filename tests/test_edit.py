"""Editing by text (CSD eq. 11) as a refine: on the procedural prior's exact scores, its direction turns a red cube
green; a new job may not name an edit; a refine runs the edit instead of its method and the next refine does not
inherit it; a small edit end to end through the job runner.

The equation itself is checked in tests/test_methods.py (test_csd_edit_is_eq_11 and the step's cases).
"""

from __future__ import annotations

import json

import pytest
import torch

from backend.cli import main as cli_main
from backend.distill.methods import EDIT, METHODS
from backend.distill.step import DistillConfig, distillation_loss, prompt_set
from backend.jobs.admission import Admission, Refused
from backend.jobs.runner import JobPlan, fixed_prior, run_job
from backend.priors.procedural.prior import ProceduralPrior
from backend.priors.procedural.world import COLOURS, ground_truth
from backend.scene.cameras import front_view
from backend.train import Trainer
from shared.settings import SettingsError, validate


def _mean_update(settings: dict, prompt: str, image: torch.Tensor, prior: ProceduralPrior,
                 mask: torch.Tensor, draws: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean step -d loss / d x over ``draws`` timesteps and noises, in image units (x is in [-1, 1]): its mean
    inside the object's silhouette per channel, and its mean size outside."""
    config = DistillConfig.from_settings(settings)
    x = prior.encode(image).requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    for _ in range(draws):
        distillation_loss(prior, x, prompt_set(prompt, settings), config, 0.8, gen, front_view(1)).loss.backward()
    step = -x.grad[0] / draws / 2
    return step[:, mask].mean(-1), step[:, ~mask].abs().mean()


def test_the_edit_direction_turns_a_red_cube_green_and_leaves_the_background():
    prior = ProceduralPrior(resolution=32)
    red, cover = ground_truth("a red cube", front_view(1), 32)
    green, _ = ground_truth("a green cube", front_view(1), 32)
    inside = cover[0, 0] > 0.99
    edit = validate({"edit_prompt": "red"})
    change, outside = _mean_update(edit, "a green cube", red, prior, inside)
    towards = torch.tensor(COLOURS["green"]) - torch.tensor(COLOURS["red"])
    # Red falls, green rises: the step points along green - red (cosine > 0.9), and the background barely moves.
    assert change[0] < 0 < change[1]
    assert torch.nn.functional.cosine_similarity(change, towards, dim=0) > 0.9
    assert outside < 0.1 * change.norm()
    # Removing "red" acts once the render has left red: on the red cube the prior's posteriors under "red" and
    # under the empty prompt are both the red cube, so w2's term is zero there; past halfway to green it pushes
    # further along green - red.
    without, _ = _mean_update({**edit, "edit_w2": 0.0}, "a green cube", red, prior, inside)
    torch.testing.assert_close(change, without, rtol=1e-3, atol=1e-4)
    past_halfway = 0.4 * red + 0.6 * green
    change, _ = _mean_update(edit, "a green cube", past_halfway, prior, inside)
    without, _ = _mean_update({**edit, "edit_w2": 0.0}, "a green cube", past_halfway, prior, inside)
    assert (change - without) @ towards > 0.1 * (without @ towards) > 0


def test_a_new_job_may_not_name_an_edit(tmp_path):
    out = tmp_path / "new"
    assert cli_main(["generate", "a green cube", "--out", str(out), "--edit-prompt", "red", "--quiet"]) == 2
    assert not out.exists()  # refused before anything was made
    with pytest.raises(Refused, match="edit_prompt") as refused:
        Admission().admit("a green cube", {"edit_prompt": "red"})
    assert refused.value.code == "settings"
    with pytest.raises(SettingsError, match="refine"):
        run_job(JobPlan("a green cube", validate({"edit_prompt": "red"}), tmp_path), torch.device("cpu"),
                fixed_prior(ProceduralPrior(resolution=16)))
    # A refine (settings over a source's) may.
    assert Admission().admit("a green cube", {"edit_prompt": "red"}, base=validate({}))["edit_prompt"] == "red"


TINY = {"quality": "draft", "representation": "gaussians", "gaussian_points": 300, "procedural_resolution": 16,
        "render_res_start": 16, "render_res_end": 16, "camera_bank_size": 8, "mesh_resolution": 32,
        "texture_size": 64, "preview_every": 0, "lr": 0.05, "steps": 60}


def test_a_small_edit_end_to_end_turns_the_colour_and_the_next_refine_drops_it(tmp_path):
    torch.set_num_threads(1)
    prior = ProceduralPrior(resolution=16)
    texts: set[str] = set()
    denoise = prior._denoise

    def spy(x_t, t, branch_texts, views, **images):  # the texts each step's one prior call is asked for
        texts.update(branch_texts)
        return denoise(x_t, t, branch_texts, views, **images)

    prior._denoise = spy
    cpu, settings = torch.device("cpu"), validate(TINY)
    red, edit = tmp_path / "red", tmp_path / "edit"
    red.mkdir()
    edit.mkdir()
    run_job(JobPlan("a red cube", settings, red), cpu, fixed_prior(prior))
    before = torch.tensor(json.loads((red / "job.json").read_text())["figures"]["mean_colour"])
    texts.clear()
    run_job(JobPlan("a green cube", settings, edit, source=red / "checkpoint.pt", overrides={"edit_prompt": "red"},
                    more_steps=40), cpu, fixed_prior(prior))
    record = json.loads((edit / "job.json").read_text())
    assert record["settings"]["edit_prompt"] == "red" and record["steps_done"] == 100
    # Eq. 11's branches, not TBSD's (the job's method): y_target, the empty prompt and y_edit.
    assert texts == {"a green cube", "", "red"}
    after = torch.tensor(record["figures"]["mean_colour"])
    towards = torch.tensor(COLOURS["green"]) - torch.tensor(COLOURS["red"])
    # The exported colour moved most of the way from the source's toward green.
    assert (after - before) @ towards > 0.5 * towards.norm() ** 2, (before, after)

    again = Trainer.from_checkpoint(edit / "checkpoint.pt", prior, prompt="a green cube", settings={})
    assert again.settings["edit_prompt"] == "" and again.distill.spec is METHODS["tbsd"]
    resumed = Trainer.from_checkpoint(edit / "checkpoint.pt", prior)  # the edit job's own, continued exactly
    assert resumed.distill.spec is EDIT and resumed.prompts.negative == "red"
