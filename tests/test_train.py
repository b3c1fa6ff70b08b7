"""The training loop's own contracts at toy sizes on the CPU: the cadence it is given, its phase timings, and the
representation's strategy run after each optimiser step with the step's render."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.priors.procedural.prior import ProceduralPrior
from backend.train import PHASES, Cadence, Trainer, TrainEvents, regulariser_weight
from shared.settings import validate


@pytest.fixture(scope="module")
def prior() -> ProceduralPrior:
    return ProceduralPrior(resolution=32)


def _settings(**extra):
    return validate({"quality": "draft", "representation": "gaussians", "gaussian_points": 300,
                     "camera_bank_size": 4, "preview_every": 0, "checkpoint_every": 0, **extra})


def _preview_steps(trainer: Trainer) -> list[int]:
    seen: list[int] = []
    trainer.run(TrainEvents(on_preview=lambda step, strip: seen.append(step)))
    return seen


def test_a_cadence_given_at_construction_is_the_runs_and_survives_a_resume(prior, tmp_path: Path):
    settings = _settings(steps=4)
    assert _preview_steps(Trainer(prior, "a red cube", settings)) == []  # the settings': no previews
    trainer = Trainer(prior, "a red cube", settings,
                      cadence_overrides={"preview_every": 2, "preview_views": 1, "preview_size": 16})
    assert _preview_steps(trainer) == [2, 4]
    assert trainer.cadence == Cadence(preview_every=2, preview_views=1, preview_size=16, checkpoint_every=0)
    trainer.save_checkpoint(tmp_path / "checkpoint.pt")
    # Over the checkpoint's settings: the override sets the preview size, the settings' preview_every stays.
    resumed = Trainer.from_checkpoint(tmp_path / "checkpoint.pt", prior, settings={"preview_every": 1},
                                      cadence_overrides={"preview_size": 16})
    resumed.extend(2)
    assert resumed.cadence.preview_size == 16
    assert _preview_steps(resumed) == [5, 6]


def test_the_trainer_runs_the_gaussians_strategy_on_its_schedule(prior):
    """Densification rounds every tenth of the run from 10% to 60% (GaussianConfig): a 20-step run densifies
    after steps 2, 4, ..., 12 and never after; each round starts the gradient statistics afresh."""
    trainer = Trainer(prior, "a red cube", _settings(steps=20, gaussian_max_points=100000))
    counts, sums = [], []
    for _ in range(20):
        trainer.train_step()
        counts.append(trainer.scene.num_points)
        sums.append(float(trainer.strategy_state.grad_sum.sum()))
    changed = [i + 1 for i in range(1, 20) if counts[i] != counts[i - 1]]
    assert changed and set(changed) <= {2, 4, 6, 8, 10, 12}, counts
    for step in changed:
        assert sums[step - 1] == 0.0 and sums[step - 2] > 0.0
    assert set(trainer.timings) == set(PHASES) and all(v > 0 for v in trainer.timings.values())


def test_a_checkpoint_from_before_a_setting_existed_resumes_with_its_presets_value(prior, tmp_path: Path):
    trainer = Trainer(prior, "a red cube", _settings(steps=2))
    # As written by an older version: these settings did not exist yet.
    del trainer.settings["mesh_smooth_iterations"], trainer.settings["mesh_resolution"]
    trainer.save_checkpoint(tmp_path / "checkpoint.pt")
    resumed = Trainer.from_checkpoint(tmp_path / "checkpoint.pt", prior)
    expected = validate({"quality": "draft", "representation": "gaussians"})
    assert resumed.settings["mesh_resolution"] == expected["mesh_resolution"] == 64  # the draft preset's, not 192
    assert resumed.settings["mesh_smooth_iterations"] == expected["mesh_smooth_iterations"]


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_a_run_resumes_on_the_gpu_with_its_generator(tmp_path: Path):
    """A checkpoint loaded onto the GPU brings the (CPU) generator's state there; resuming must still work and
    continue the same random stream (session 14: every GPU resume failed with 'RNG state must be a ByteTensor')."""
    gpu_prior = ProceduralPrior(resolution=32, device="cuda")
    trainer = Trainer(gpu_prior, "a red cube", _settings(steps=2), device="cuda")
    trainer.run(TrainEvents())
    trainer.save_checkpoint(tmp_path / "checkpoint.pt")
    resumed = Trainer.from_checkpoint(tmp_path / "checkpoint.pt", gpu_prior, device="cuda")
    assert resumed.step == 2
    assert __import__("torch").equal(resumed.generator.get_state(), trainer.generator.get_state())


def test_the_translucency_weight_is_off_before_its_start_and_the_settings_value_after():
    settings = validate({"representation": "gaussians", "lambda_translucency": 0.3, "translucency_start": 0.6})
    assert [regulariser_weight("translucency", p, settings) for p in (0.0, 0.59, 0.6, 0.99)] == [0.0, 0.0, 0.3, 0.3]
    # The default start keeps the term on from step 0, as before the setting existed.
    assert regulariser_weight("translucency", 0.0, validate({"lambda_translucency": 0.3})) == 0.3
    assert regulariser_weight("sparsity", 0.0, settings) == settings["lambda_sparsity"]  # other terms: no start


def test_a_run_with_a_late_translucency_start_trains_as_one_without_the_term_until_then(prior):
    def losses(weight: float) -> list[float]:
        trainer = Trainer(prior, "a white cube", _settings(steps=4, lambda_translucency=weight,
                                                           translucency_start=0.5))
        return [float(trainer.train_step()["loss"]) for _ in range(4)]

    without, late = losses(0.0), losses(5.0)
    assert late[:2] == without[:2]
    assert late[2] > without[2]  # from half the run the term adds to the loss
