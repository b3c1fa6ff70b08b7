"""One job from its plan to its record: the prior, the trainer, training, the checkpoint, the export, the timings.

The CLI's ``generate``, the worker (and through it the server and ``batch``) and the benchmark all run a job
here, so a job's composition and its record's timings have one definition. ``JobRun`` is the job in three steps
(``prepare``, ``train``, ``finish``) for a caller that reports between them (the worker sends ``started`` after
``prepare``); ``run_job`` is the three in a row.

A trainer comes from one of three places (``JobPlan``): a fresh run; a checkpoint to continue with this job's
prompt and settings for ``more_steps`` (a refine, ``generate --resume``; an edit when the settings name
``edit_prompt``, which a fresh job may not); or this job's own checkpoint, continued
exactly as it was (a job a restarted server resumes: from a periodic checkpoint when it was training, or from the
one saved at the end of training when it was exporting, so only the export runs again). A texture job's checkpoint
holds its mesh, so it is refined or edited by text like any other (its export bakes into that mesh).

A generated job's end runs the optional texture refinement (``texture_refine_steps``; backend/jobs/texture_refine.py)
between extraction and the files, streaming to the sinks training had.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

from backend import records
from backend.records import CHECKPOINT_FILE
from backend.reference import REFERENCE_FILE, Reference, read_reference_file, save_reference
from backend.train import Trainer, TrainEvents
from shared.settings import check_new_job

if TYPE_CHECKING:
    from backend.export.meshread import InputMesh
    from backend.jobs.finish import Finished

# The export's modules (finish, texture, meshread and what they import) load when a job reaches its end or reads a
# mesh, not before its first step: a cold start waits only for what training needs.

# (model, procedural_resolution, ip_adapter) -> the loaded prior
PriorLoader = Callable[[str, int, str], Any]


@dataclass
class JobPlan:
    """What to run: the prompt and complete settings, the job's folder, and where its trainer starts."""

    prompt: str
    settings: Mapping[str, Any]
    folder: Path
    source: Path | None = None  # a checkpoint to continue with this prompt
    overrides: Mapping[str, Any] | None = None  # with ``source``: settings laid over the checkpoint's
    more_steps: int | None = None  # with ``source``: this many steps more (None: on to its run's end)
    resume: Path | None = None  # this job's own checkpoint: continue exactly (prompt and settings its own)
    checkpoint: bool = True  # keep checkpoint.pt beside the meshes (saved before the export)
    cadence: Mapping[str, int] | None = None  # Cadence fields over the settings' (a server job's stream options)
    mesh: Path | None = None  # a texture job: the user's mesh (.glb/.obj/.ply) whose appearance alone is trained
    # An image-prompt job's reference image (PNG/JPEG; a served job's reference.png in its folder), and the name the
    # user gave it. None: drawn from the prior, or the checkpoint's own.
    reference: Path | None = None
    reference_name: str | None = None


class JobRun:
    """One job in a process: ``prepare`` (load the prior, build the trainer), ``train``, ``finish``."""

    def __init__(self, plan: JobPlan, device: torch.device, load: PriorLoader) -> None:
        self.plan = plan
        self.device = device
        self._load = load
        self.trainer: Trainer | None = None
        self.load_seconds = 0.0
        self.train_seconds = 0.0
        self.started: str | None = None
        self.resumed_at: int | None = None  # the step this job's own checkpoint held (a restarted server's resume)
        self.source_mesh: InputMesh | None = None  # a texture job's mesh, as read
        self.events: TrainEvents | None = None  # training's sinks, which a texture refinement streams to as well

    def prepare(self) -> Trainer:
        plan, s = self.plan, self.plan.settings
        if plan.source is None and plan.resume is None:
            check_new_job(s)
        self.started = records.now()
        if plan.mesh is not None:  # a bad mesh is refused before the prior loads
            from backend.export.meshread import read_mesh

            self.source_mesh = read_mesh(plan.mesh)
        reference = None
        if plan.reference is not None and plan.resume is None and plan.source is None:  # so is a bad image
            # (A run from a checkpoint goes on with the checkpoint's own reference.)
            reference = Reference(read_reference_file(plan.reference), "image",
                                  plan.reference_name or plan.reference.name)
        t0 = time.perf_counter()
        prior = self._load(s["model"], s["procedural_resolution"], job_adapter(s))
        self.load_seconds = time.perf_counter() - t0
        cadence = plan.cadence  # a server job's stream options over the run's own settings
        if plan.mesh is not None:
            from backend.jobs.texture import texture_scene

            if plan.resume is not None or plan.source is not None:
                # A texture job's checkpoint holds its mesh, so a refine or an edit names the checkpoint alone.
                raise ValueError("a run from a checkpoint takes its mesh from the checkpoint; give no mesh file")
            assert self.source_mesh is not None
            scene = texture_scene(self.source_mesh, s, prior, self.device, plan.mesh.name)
            trainer = Trainer(prior, plan.prompt, s, representation=scene, device=self.device,
                              cadence_overrides=cadence, reference=reference)
        elif plan.resume is not None:
            trainer = Trainer.from_checkpoint(plan.resume, prior, self.device, cadence_overrides=cadence)
            self.resumed_at = trainer.step
        elif plan.source is not None:
            trainer = Trainer.from_checkpoint(plan.source, prior, self.device, plan.prompt, plan.overrides,
                                              cadence_overrides=cadence)
            if plan.more_steps is not None:
                trainer.extend(plan.more_steps)
        else:
            trainer = Trainer(prior, plan.prompt, s, device=self.device, cadence_overrides=cadence,
                              reference=reference)
        if trainer.reference is not None:
            # Beside the results, before training: the pixels the method reads, whatever their source.
            save_reference(plan.folder, trainer.reference.pixels)
        self.trainer = trainer
        return trainer

    def train(self, events: TrainEvents | None = None) -> bool:
        """Train to the end; False when ``events.should_stop`` stopped it first."""
        assert self.trainer is not None, "prepare() first"
        self.events = events
        t0 = time.perf_counter()
        completed = self.trainer.run(events)
        self.train_seconds += time.perf_counter() - t0
        return completed

    def finish(self, record: Mapping[str, Any] | None = None) -> Finished:
        """Checkpoint, export, record: ``record`` (what the caller knows) gains the timings and the export's
        figures and is written last."""
        from backend.jobs.finish import finish_job
        from backend.jobs.texture import texture_export, texture_figures
        from backend.scene.textured_mesh import TexturedMesh

        trainer = self.trainer
        assert trainer is not None, "prepare() first"
        if self.plan.checkpoint:
            # Before the export: a job killed while exporting is finished from here, without training again.
            trainer.save_checkpoint(self.plan.folder / CHECKPOINT_FILE)
        known = {"started": self.started, **dict(record or {}),
                 "seconds": {"load_prior": self.load_seconds, "train": self.train_seconds},
                 "steps_per_second": trainer.step / max(self.train_seconds, 1e-9), "ended": records.now()}
        if self.plan.checkpoint:
            known["checkpoint"] = CHECKPOINT_FILE
        if self.resumed_at is not None:
            known["resumed_at_step"] = self.resumed_at  # == steps_done: only the export ran again
        if trainer.reference is not None:
            known["reference"] = reference_record(trainer)
        if isinstance(trainer.scene, TexturedMesh):  # a texture job, or one continued from its checkpoint
            known = {"command": "texture", "mesh_source": trainer.scene.name, **known}
            return finish_job(trainer, self.plan.folder, known, checkpoint=self.plan.checkpoint,
                              export=texture_export, figures=texture_figures)
        if trainer.settings["texture_refine_steps"] > 0:
            from backend.jobs.texture_refine import refined_export

            s = trainer.settings
            # The job's model at the stage's side: the procedural prior renders its world at that side (a small
            # prior of its own); Stable Diffusion is the one already loaded.
            t0 = time.perf_counter()
            prior = self._load(s["model"], s["texture_refine_resolution"], job_adapter(s))
            known["seconds"]["load_refine_prior"] = time.perf_counter() - t0
            return finish_job(trainer, self.plan.folder, known, checkpoint=self.plan.checkpoint,
                              export=lambda t, folder: refined_export(t, folder, prior, self.events,
                                                                      self.plan.cadence))
        return finish_job(trainer, self.plan.folder, known, checkpoint=self.plan.checkpoint)


def reference_record(trainer: Trainer) -> dict[str, Any]:
    """job.json's account of the reference: its file, source and size; on the procedural prior also the
    mixture's weights p(k | prompt, reference) at the job's ip_scale (the three largest) and its mode (the object
    the reference selects), which the figures measure the result against."""
    assert trainer.reference is not None
    out = trainer.reference.record()
    weights_of = getattr(trainer.prior, "reference_weights", None)
    meaning_of = getattr(trainer.prior, "meaning", None)
    if weights_of is not None and meaning_of is not None and trainer.prompts.reference is not None:
        weights = weights_of(trainer.prompt, trainer.prompts.reference)
        comps = meaning_of(trainer.prompt).components()
        order = torch.argsort(weights, descending=True)[:3].tolist()
        out["weights"] = {_component_text(comps[i]): round(float(weights[i]), 4) for i in order}
        mode = trainer.prior.reference_mode(trainer.prompt, trainer.prompts.reference)
        out["mode"] = None if mode is None else _component_text(mode)
    return out


def _component_text(component: Any) -> str:
    text = f"a {component.colour} {component.shape}"
    return f"{text} ({component.degradation})" if component.degradation else text


def run_job(plan: JobPlan, device: torch.device, load: PriorLoader, record: Mapping[str, Any] | None = None,
            events: TrainEvents | None = None) -> Finished | None:
    """Prepare, train and finish ``plan``; None when ``events.should_stop`` stopped it."""
    run = JobRun(plan, device, load)
    run.prepare()
    return run.finish(record) if run.train(events) else None


def fixed_prior(prior: Any) -> PriorLoader:
    """A loader that hands out a prior already loaded (the benchmark's, a test's)."""
    return lambda model, resolution, ip_adapter="": prior


def job_adapter(settings: Mapping[str, Any]) -> str:
    """The IP-Adapter a job's prior loads: its ``ip_adapter`` for an image-prompt method, else none (a text-only
    method never reads it, and a UNet without one is the smaller, faster prior)."""
    from backend.distill.methods import METHODS

    return str(settings.get("ip_adapter", "")) if METHODS[settings["method"]].image_prompt else ""


__all__ = ["REFERENCE_FILE", "JobPlan", "JobRun", "PriorLoader", "fixed_prior", "job_adapter", "reference_record", "run_job"]
