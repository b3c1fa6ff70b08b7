"""The 3D training loop: a method (backend/distill) on a representation (backend/scene) with a prior.

`Trainer` holds one run's state (representation, its strategy's state, optimiser, step, generator) so a run
can be checkpointed, resumed, cancelled between steps and continued with new settings (`extend`: the CLI's
resume and the server's refine). The trainer owns the cadence (`Cadence`: when to report progress, draw a
preview, export an intermediate mesh, write a checkpoint), read from the settings with any fields a caller
sets at construction (a server job's stream options); callers only pass sinks (`TrainEvents`), so the CLI, the
server's worker and the tests share one loop.

Checkpoints hold only tensors, dicts, lists, strings and numbers (the generator state is a uint8 tensor), so
they load with ``torch.load(weights_only=True)``: a planted checkpoint cannot run code.
"""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from jaxtyping import Float
from torch import Tensor

from backend.distill.methods import METHODS
from backend.distill.step import DistillConfig, distillation_loss, prompt_set
from backend.files import publish, tmp_name
from backend.optimiser import AdamW
from backend.phases import PhaseClock
from backend.priors.base import DiffusionPrior, PromptSet
from backend.reference import Reference, job_reference
from backend.scene.cameras import CameraConfig, Views, eval_views, sample_orbit_views, view_suffix
from backend.scene.nerf import init_radius
from backend.scene.registry import checkpoint_class, representation_class
from backend.scene.representation import RenderOutput, Representation
from shared.settings import defaults, preset_values, refine_base

CAMERA_BANK_AUTO = 96
CHECKPOINT_FORMAT = 2
PHASES = ("render", "encode", "prior_and_method", "backward", "optimiser")


@dataclass
class Progress:
    step: int  # steps done
    total: int
    seconds: float  # since the run (or its resume) started
    eta_seconds: float
    # The step's loss and figures as the step left them (GPU tensors on CUDA): reading `loss` waits for the
    # GPU, so a listener that reads it every few steps keeps the loop free of host syncs.
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def loss(self) -> float:
        return float(self.record["loss"])


@dataclass
class Cadence:
    """When the loop calls each sink, in steps (0: never). The final step always reports progress and, when
    previews are on, a preview; it never exports an intermediate mesh (the finished job's mesh follows)."""

    progress_every: int = 1
    preview_every: int = 0
    preview_views: int = 4
    preview_size: int = 128
    mesh_every: int = 0
    checkpoint_every: int = 0

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], **overrides: int) -> "Cadence":
        """The settings' ``preview_every`` and ``checkpoint_every``; ``overrides`` set the rest (e.g. a server
        job's stream options)."""
        return cls(**{"preview_every": settings["preview_every"], "checkpoint_every": settings["checkpoint_every"],
                      **overrides})


@dataclass
class TrainEvents:
    """Sinks the loop feeds at the trainer's cadence; any may be None."""

    on_progress: Callable[[Progress], None] | None = None
    on_preview: Callable[[int, Float[Tensor, "3 H W"]], None] | None = None
    # An intermediate mesh is due: the sink extracts and sends it (training waits).
    on_mesh: Callable[[int, "Trainer"], None] | None = None
    # Polled before every step (and before an intermediate mesh): True stops the run (cancel, shutdown).
    should_stop: Callable[[], bool] | None = None
    checkpoint_path: Path | None = None  # where the cadence's checkpoints go (None: none)


def build_representation(kind: str, settings: Mapping[str, Any], prior: DiffusionPrior,
                         device: torch.device) -> Representation:
    """A fresh representation ``kind`` sized by the settings, with the prior's background when it has one."""
    return representation_class(kind).from_settings(settings, prior.background).to(device)


def render_resolution(progress: float, settings: Mapping[str, Any], prior_resolution: int | None = None) -> int:
    """The render side at ``progress``: the schedule's value, never above what the prior consumes.

    A render larger than the prior's input is only downsampled by ``prior.encode`` again: the procedural prior
    works at ``procedural_resolution`` (64), so a 256 px render there costs 16 times the rays for the same
    gradient. Stable Diffusion consumes 512 px, above every default, so its schedule is unchanged.
    """
    res = settings["render_res_end"] if progress >= settings["render_res_switch_at"] else settings["render_res_start"]
    return res if prior_resolution is None else min(res, prior_resolution)


def orientation_weight(progress: float, settings: Mapping[str, Any]) -> float:
    """Linear ramp from start to end over the first half of the run (threestudio: 10 -> 1000 by step 5000)."""
    frac = min(progress / 0.5, 1.0)
    return settings["lambda_orientation_start"] + frac * (settings["lambda_orientation_end"] - settings["lambda_orientation_start"])


def regulariser_weight(name: str, progress: float, settings: Mapping[str, Any]) -> float:
    """The weight of a representation's regulariser ``name`` at ``progress``. The translucency term is off before
    ``translucency_start``, so the term can be kept off while densification still moves and clones splats
    (measured at 0.6 and not a fix: docs/METHODS.md, session 15)."""
    if name == "translucency" and progress < settings["translucency_start"]:
        return 0.0
    return float(settings[f"lambda_{name}"])


class Trainer:
    def __init__(self, prior: DiffusionPrior, prompt: str, settings: Mapping[str, Any],
                 representation: Representation | None = None, device: torch.device | str = "cpu",
                 cadence_overrides: Mapping[str, int] | None = None, reference: Reference | None = None) -> None:
        """A run at step 0 (or on ``representation``, e.g. a checkpoint's). Its cadence is the settings' with
        ``cadence_overrides`` (``Cadence`` fields, e.g. a server job's stream options) set over them. ``reference``
        is an image-prompt method's reference image (None: drawn from the prior when the settings say so)."""
        self.prior = prior
        self.device = torch.device(device)
        self.settings = dict(settings)
        self.prompt = prompt
        self.reference = job_reference(prior, prompt, settings, reference)
        self._reference_image = None if self.reference is None else self.reference.tensor()
        self.prompts = prompt_set(prompt, settings, self._reference_image)
        self.cameras = CameraConfig.from_settings(settings)
        self.distill = DistillConfig.from_settings(settings)
        prior.check_prompts(self.prompts)
        if representation is None:
            # Resolved once, into the settings the checkpoint and job.json keep: the blob stays in the NeRF's
            # density for the whole run, so a resume must rebuild the same one.
            self.settings["nerf_init_radius"] = init_radius(settings["nerf_init_radius"], prior.camera_aware)
            # Initial weights follow the run's seed, without disturbing the caller's global RNG.
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(settings["seed"])
                representation = build_representation(settings["representation"], self.settings, prior,
                                                      self.device)
        self.scene = representation
        self.optimiser = AdamW(self.scene.optimiser_groups(settings["lr"]), lr=settings["lr"])
        # Not checkpointed: a resumed run starts its strategy afresh (Gaussians: gradient statistics since the
        # last densification round), as it always has.
        self.strategy = self.scene.strategy()
        self.strategy_state = self.strategy.initialize_state()
        self.generator = torch.Generator().manual_seed(settings["seed"])
        self.step = 0
        self.total = settings["steps"]
        self.cadence = Cadence.from_settings(self.settings, **(cadence_overrides or {}))
        self._bank: tuple[Views, list[tuple[float, float]]] | None = None
        self.clock = PhaseClock(PHASES, self.device)

    @property
    def timings(self) -> dict[str, float]:
        """Seconds spent per phase of the steps run so far (device time on CUDA)."""
        return self.clock.totals()

    # --- cameras ------------------------------------------------------------------------------------
    def _bank_size(self) -> int:
        size = self.settings["camera_bank_size"]
        if size < 0:
            return CAMERA_BANK_AUTO if self.prior.camera_aware else 0
        return size

    def _views(self) -> tuple[Views, list[tuple[float, float]]]:
        n = self.settings["views_per_step"]
        bank_size = self._bank_size()
        if bank_size == 0:
            views, angles = sample_orbit_views(n, self.cameras, self.generator)
            return views.to(self.device), angles
        if self._bank is None:
            # The bank has its own generator so resuming a run rebuilds the same cameras.
            bank_gen = torch.Generator().manual_seed(self.settings["seed"] + 7919)
            views, angles = sample_orbit_views(bank_size, self.cameras, bank_gen)
            self._bank = (views.to(self.device), angles)
        idx = torch.randint(0, bank_size, (n,), generator=self.generator).tolist()
        views, angles = self._bank
        return views.select(idx), [angles[i] for i in idx]

    def _shading(self) -> str:
        if self.prior.fixed_shading is not None:
            return self.prior.fixed_shading
        u = float(torch.rand(1, generator=self.generator))
        return "textureless" if u < self.settings["textureless_prob"] else "diffuse"

    def _prompt_groups(self, angles: list[tuple[float, float]]) -> list[tuple[PromptSet, list[int]]]:
        """Batch items that share a prompt; view-dependent suffixes split them (one prior call per group)."""
        if self.prior.camera_aware or not self.settings["view_prompts"]:
            return [(self.prompts, list(range(len(angles))))]
        groups: dict[str, list[int]] = {}
        for i, (az, el) in enumerate(angles):
            groups.setdefault(view_suffix(az, el), []).append(i)
        return [(prompt_set(self.prompt + suffix, self.settings, self._reference_image), idx)
                for suffix, idx in groups.items()]

    # --- one step -------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, Any]:
        s = self.settings
        progress = self.step / max(self.total, 1)
        # Representations draw from torch's global RNG (ray jitter, occupancy probes, densification); seeding it
        # from the run's generator each step makes a run repeatable and a resumed run identical to an
        # uninterrupted one, since that generator is checkpointed.
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=self.generator)))
        self.scene.train()
        self.scene.before_step(self.step, self.total)
        views, angles = self._views()
        res = render_resolution(progress, s, self.prior.image_size)
        self.clock.start()
        out = self.scene.render(views, res, res, self._shading())
        self.clock.mark("render")
        x = self.prior.encode(out.rgb)
        self.clock.mark("encode")
        loss = torch.zeros((), device=x.device)
        info: dict[str, Any] = {}
        for prompts, idx in self._prompt_groups(angles):
            sub_views = views.select(idx)
            result = distillation_loss(self.prior, x[idx], prompts, self.distill, progress, self.generator,
                                       sub_views if self.prior.camera_aware else None)
            loss = loss + result.loss * len(idx) / len(angles)
            info.update(result.info)
        self.clock.mark("prior_and_method")
        if "orientation" in out.losses:
            loss = loss + orientation_weight(progress, s) * out.losses["orientation"]
        for name in ("sparsity", "translucency"):  # each representation offers the terms that apply to it
            weight = regulariser_weight(name, progress, s)
            if weight > 0 and name in out.losses:
                loss = loss + weight * out.losses[name]
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.clock.mark("backward")
        self.optimiser.step()
        self.strategy.step_post_optimiser(self.scene, self.optimiser, self.strategy_state, self.step, self.total,
                                          out.info)
        self.clock.mark("optimiser")
        self.step += 1
        # Tensors, not floats: reading them here would stall the loop on the GPU every step (Progress reads lazily).
        return {"loss": loss.detach(), "resolution": res, **info}

    def extend(self, steps: int) -> None:
        """Train ``steps`` more from the current step (refine, or a resume asked for more). Step-fraction
        schedules then see the whole, longer run as one run."""
        if steps < 0:
            raise ValueError(f"cannot extend a run by {steps} steps")
        self.total = self.step + steps
        self.settings["steps"] = self.total

    def run(self, events: TrainEvents | None = None, until: int | None = None) -> bool:
        """Train up to step ``until`` (default: the end), feeding the sinks at ``self.cadence``.
        Returns False if ``should_stop`` stopped it early."""
        events = events or TrainEvents()
        stop = events.should_stop or (lambda: False)
        until = self.total if until is None else min(until, self.total)
        start_step, start = self.step, time.perf_counter()
        while self.step < until:
            if stop():
                return False
            record = self.train_step()
            c, step, end = self.cadence, self.step, self.step == self.total
            if events.on_progress is not None and (end or step == until or step % c.progress_every == 0):
                elapsed = time.perf_counter() - start
                eta = elapsed / (step - start_step) * (self.total - step)
                events.on_progress(Progress(step, self.total, elapsed, eta, record))
            if events.on_preview is not None and c.preview_every > 0 and (end or step % c.preview_every == 0):
                events.on_preview(step, self.preview(c.preview_views, c.preview_size))
            if events.on_mesh is not None and c.mesh_every > 0 and step % c.mesh_every == 0 and not end and not stop():
                events.on_mesh(step, self)
            if events.checkpoint_path is not None and c.checkpoint_every > 0 and step % c.checkpoint_every == 0:
                self.save_checkpoint(events.checkpoint_path)
        return True

    # --- views of the result --------------------------------------------------------------------------
    @torch.no_grad()
    def render_eval(self, n: int = 8, resolution: int | None = None, shading: str = "diffuse") -> RenderOutput:
        """``n`` turntable views, rendered one at a time: a NeRF's per-sample working memory grows with the
        rays of a call, and eight 128 px views at once took over 20 GB on a CPU."""
        self.scene.eval()
        res = resolution or self.settings["render_res_start"]
        views = eval_views(n).to(self.device)
        outs = [self.scene.render(views.select([i]), res, res, shading) for i in range(n)]
        return RenderOutput(rgb=torch.cat([o.rgb for o in outs]), opacity=torch.cat([o.opacity for o in outs]))

    def preview(self, n: int = 4, resolution: int = 128) -> Float[Tensor, "3 H W"]:
        """A strip of ``n`` turntable views."""
        out = self.render_eval(n, resolution)
        return torch.cat(list(out.rgb.clamp(0, 1).cpu()), dim=-1)

    # --- checkpoints ------------------------------------------------------------------------------------
    def save_checkpoint(self, path: Path) -> None:
        """Everything a run needs to continue (weights, optimiser, step, total, settings, generator), as plain
        tensors and containers only, written durably (temporary name, fsync, rename)."""
        tmp = tmp_name(path)
        torch.save({
            "format": CHECKPOINT_FORMAT,
            "prompt": self.prompt,
            "settings": dict(self.settings),
            "step": self.step,
            "total": self.total,
            "representation": self.scene.kind,
            "scene_state": dict(self.scene.state_dict()),
            "scene_extra": self.scene.extra_state(),
            "optimiser": self.optimiser.state_dict(),
            "generator": self.generator.get_state(),  # a uint8 tensor
            **({} if self.reference is None else {
                "reference": torch.from_numpy(self.reference.pixels.copy()),  # uint8 [H, W, 3]
                "reference_source": self.reference.source,
                "reference_given": self.reference.given_name,
            }),
        }, tmp)
        publish(tmp, path)

    @classmethod
    def from_checkpoint(cls, path: Path, prior: DiffusionPrior, device: torch.device | str = "cpu",
                        prompt: str | None = None, settings: Mapping[str, Any] | None = None,
                        cadence_overrides: Mapping[str, int] | None = None) -> "Trainer":
        """Resume a run at its step, to its total (``extend`` trains further); a new prompt or settings continue
        from its state (refine); ``cadence_overrides`` as in ``Trainer``, over the merged settings. Loads with
        ``weights_only=True``: anything but tensors and plain containers is refused, so a planted checkpoint cannot
        run code."""
        state = load_checkpoint(path, device)
        saved = state["settings"]
        if prompt is not None or settings is not None:  # a refine: the source's edit is not this run's
            saved = refine_base(saved)
        # A checkpoint written before a setting existed resumes with what a new run of its preset would get.
        preset = preset_values(saved.get("quality", "standard"), saved.get("representation", "nerf"))
        merged = {**defaults(), **preset, **saved, **(settings or {})}
        scene = checkpoint_class(state["representation"]).from_checkpoint(
            state["scene_state"], state["scene_extra"], merged, prior.background).to(device)
        # The run's own reference image goes on with it (a refine to a method without one drops it).
        reference = None
        if "reference" in state and METHODS[merged["method"]].image_prompt:
            reference = Reference(state["reference"].cpu().numpy(), str(state["reference_source"]),
                                  state.get("reference_given"))
        trainer = cls(prior, prompt or state["prompt"], merged, scene, device, cadence_overrides, reference)
        trainer.optimiser.load_state_dict(state["optimiser"])
        trainer.step = int(state["step"])
        trainer.total = int(state.get("total", state["settings"]["steps"]))
        trainer.settings["steps"] = trainer.total
        # The generator is a CPU one: a checkpoint loaded onto the GPU brought its state there too, and
        # set_state takes only a CPU uint8 tensor (every GPU resume and refine failed on this).
        trainer.generator.set_state(state["generator"].to("cpu"))
        return trainer


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint's contents, or ValueError naming the file and why it was refused."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"checkpoint {Path(path).name} was refused: it holds something other than tensors and "
                         f"plain containers (only weights-only checkpoints are loaded): {first}") from None
    except (EOFError, RuntimeError, OSError) as exc:
        raise ValueError(f"checkpoint {Path(path).name} cannot be read: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") not in (1, CHECKPOINT_FORMAT):
        raise ValueError(f"checkpoint {Path(path).name} is not a TBSD Studio checkpoint (format "
                         f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}; "
                         f"expected {CHECKPOINT_FORMAT})")
    return state


__all__ = ["Trainer", "TrainEvents", "Cadence", "load_checkpoint", "Progress", "build_representation", "render_resolution", "orientation_weight",
           "regulariser_weight"]
