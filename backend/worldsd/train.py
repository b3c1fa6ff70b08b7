"""Train world-SD from nothing: the VAE on world renders, then the UNet and text encoder on its latents.

    python -m backend.worldsd.train --out runs/world-sd [--device cuda] [--resume] [--stop-after-minutes M]

Phases run in order, each a fixed number of steps: ``vae`` (reconstruction, L1 + L2 + a small KL), ``scale`` (the
latents' spread sets the VAE's ``scaling_factor``, as SD's 0.18215 was set), ``unet`` (epsilon prediction on SD's
scaled-linear schedule with min-SNR weighting, text encoder trained jointly, caption dropout for CFG, an EMA of both
for the saved weights). The run writes ``checkpoint.pt`` (weights, EMA, optimiser, phase, step) every
``--checkpoint-every`` steps and when ``--stop-after-minutes`` runs out; ``--resume`` continues from it exactly,
because every batch and every noise draw is seeded by (seed, step). ``--init-from FOLDER`` continues the UNet
phase from a saved world-SD folder (its fp16 weights, a fresh optimiser) on a machine that does not have the
checkpoint. The diffusers folder is written to ``OUT/world-sd`` at the end (and when paused), with
``training.json``, the loss log and ``loss.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from backend.files import write_json
from backend.worldsd.components import Architecture, Components, build_components, save_folder
from backend.worldsd.data import WorldImages, stream_seed

PHASES = ("vae", "scale", "unet", "done")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a run makes (saved in the checkpoint and the model card)."""

    seed: int = 0
    arch: Architecture = field(default_factory=Architecture)
    vae_steps: int = 3000
    vae_batch: int = 64
    vae_lr: float = 3e-4
    kl_weight: float = 1e-6
    scale_images: int = 2048
    unet_steps: int = 12000
    unet_batch: int = 256
    unet_lr: float = 3e-4
    warmup_steps: int = 500
    weight_decay: float = 0.01
    ema_decay: float = 0.9995
    min_snr_gamma: float = 5.0
    grad_clip: float = 1.0
    pool_views: int = 512
    refresh_images: int = 12_800  # images drawn from one pool of rendered views before the next

    @classmethod
    def tiny(cls) -> "TrainConfig":
        return cls(arch=Architecture.tiny(), vae_steps=3, vae_batch=4, scale_images=8, unet_steps=4, unet_batch=4,
                   warmup_steps=2, pool_views=4, refresh_images=8)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        values = dict(values)
        values["arch"] = Architecture.from_dict(values["arch"])
        return cls(**values)



@dataclass
class Noised:
    """A batch diffused to random timesteps: ``noisy = sqrt(abar) x0 + sqrt(1 - abar) noise``."""

    noisy: Tensor
    noise: Tensor
    t: Tensor
    abar: Tensor  # [B 1 1 1]


def add_noise(latents: Tensor, alphas_cumprod: Tensor, generator: torch.Generator) -> Noised:
    """``latents`` at uniformly drawn DDPM timesteps, noise and timesteps from ``generator`` (in that order)."""
    noise = torch.randn(latents.shape, generator=generator, device=latents.device)
    t = torch.randint(0, len(alphas_cumprod), (latents.shape[0],), generator=generator, device=latents.device)
    abar = alphas_cumprod[t].view(-1, 1, 1, 1)
    return Noised(abar.sqrt() * latents + (1 - abar).sqrt() * noise, noise, t, abar)


def min_snr_loss(pred: Tensor, noised: Noised, latents: Tensor, gamma: float, prediction_type: str) -> Tensor:
    """The denoising loss with min-SNR-gamma weighting (Hang et al. 2023), so high-noise steps stop dominating;
    ``pred`` is an epsilon or v prediction as the scheduler says."""
    abar = noised.abar
    if prediction_type == "epsilon":
        target = noised.noise
    elif prediction_type == "v_prediction":
        target = abar.sqrt() * noised.noise - (1 - abar).sqrt() * latents
    else:
        raise ValueError(f"prediction_type {prediction_type!r}: epsilon or v_prediction")
    snr = (abar / (1 - abar)).flatten()
    weight = snr.clamp(max=gamma) / (snr if prediction_type == "epsilon" else snr + 1)
    return (weight * (pred - target).pow(2).mean(dim=(1, 2, 3))).mean()

@dataclass
class RunState:
    phase: str = "vae"
    step: int = 0  # steps done in the current phase
    seconds: dict[str, float] = field(default_factory=dict)  # wall time spent per phase
    scaling_factor: float | None = None
    started_from: str | None = None  # a folder the UNet phase was initialised from (--init-from)


class WorldSDTrainer:
    """One training run's state; ``run`` advances it phase by phase until done or out of time."""

    def __init__(self, out: Path, config: TrainConfig, device: torch.device, log=print) -> None:
        self.out = out
        self.config = config
        self.device = device
        self.log = log
        self.parts: Components = build_components(config.arch, seed=config.seed, device=device)
        for m in (self.parts.vae, self.parts.unet, self.parts.text_encoder):
            m.to(device).train()
        self.state = RunState()
        self.data = WorldImages(config.arch.image_size, device, seed=config.seed, pool_views=config.pool_views,
                                refresh_images=config.refresh_images)
        self.alphas_cumprod = self.parts.scheduler.alphas_cumprod.to(device, torch.float32)
        self._token_cache: dict[str, Tensor] = {}
        self.vae_opt = torch.optim.AdamW(self.parts.vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
        # The UNet phase trains the UNet and the text encoder together; the EMA follows both.
        self.unet_params = list(self.parts.unet.parameters()) + list(self.parts.text_encoder.parameters())
        self.unet_opt = torch.optim.AdamW(self.unet_params, lr=config.unet_lr, weight_decay=config.weight_decay)
        self.ema = [p.detach().clone().float() for p in self.unet_params]
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        state = {
            "config": self.config.as_dict(), "run": asdict(self.state),
            "vae": self.parts.vae.state_dict(), "unet": self.parts.unet.state_dict(),
            "text_encoder": self.parts.text_encoder.state_dict(), "ema": self.ema,
            "vae_opt": self.vae_opt.state_dict(), "unet_opt": self.unet_opt.state_dict(),
        }
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path)

    def load_checkpoint(self) -> None:
        # weights_only: tensors, dicts and numbers, never arbitrary objects.
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        saved = TrainConfig.from_dict(state["config"])
        if saved.arch != self.config.arch or saved.seed != self.config.seed:
            raise SystemExit(f"{self.checkpoint_path} was made with another architecture or seed "
                             f"({saved.arch}, seed {saved.seed}); train into a new --out or drop --resume")
        self.parts.vae.load_state_dict(state["vae"])
        self.parts.unet.load_state_dict(state["unet"])
        self.parts.text_encoder.load_state_dict(state["text_encoder"])
        for e, s in zip(self.ema, state["ema"]):
            e.copy_(s)
        self.vae_opt.load_state_dict(state["vae_opt"])
        self.unet_opt.load_state_dict(state["unet_opt"])
        self.state = RunState(**state["run"])
        if self.state.scaling_factor is not None:
            self.parts.vae.register_to_config(scaling_factor=self.state.scaling_factor)

    def init_from_folder(self, folder: Path) -> None:
        """Start the UNet phase from a saved world-SD folder (fp16 weights; the optimiser starts afresh)."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        card = json.loads((folder / "training.json").read_text(encoding="utf-8"))
        if Architecture.from_dict(card["config"]["arch"]) != self.config.arch:
            raise SystemExit(f"{folder} has another architecture than this run's")
        kw = dict(torch_dtype=torch.float32, local_files_only=True)
        self.parts.vae.load_state_dict(AutoencoderKL.from_pretrained(folder, subfolder="vae", **kw).state_dict())
        self.parts.unet.load_state_dict(UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **kw)
                                        .state_dict())
        self.parts.text_encoder.load_state_dict(CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **kw)
                                                .state_dict())
        for e, p in zip(self.ema, self.unet_params):
            e.copy_(p.detach())
        done = card["run"]
        self.state = RunState(phase="unet", step=int(done["step"]) if done["phase"] == "unet" else 0,
                              seconds=dict(done.get("seconds", {})),
                              scaling_factor=float(card["run"]["scaling_factor"]), started_from=str(folder))
        self.parts.vae.register_to_config(scaling_factor=self.state.scaling_factor)

    # ------------------------------------------------------------------ phases

    def _vae_step(self, step: int) -> float:
        c = self.config
        images, _ = self.data.batch(step, c.vae_batch)
        x = images * 2.0 - 1.0
        generator = torch.Generator(device=self.device).manual_seed(stream_seed(c.seed, 4, step))
        with self.autocast:
            posterior = self.parts.vae.encode(x).latent_dist
            z = posterior.sample(generator=generator)
            rec = self.parts.vae.decode(z).sample.float()
        kl = posterior.kl().mean()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + c.kl_weight * kl
        self.vae_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parts.vae.parameters(), c.grad_clip)
        self.vae_opt.step()
        return float(loss.detach())

    @torch.no_grad()
    def _latents(self, images: Tensor) -> Tensor:
        """Scaled latents of images in [0, 1]: the posterior mean, as the product's prior encodes renders."""
        with self.autocast:
            mean = self.parts.vae.encode(images * 2.0 - 1.0).latent_dist.mean
        return mean.float() * float(self.parts.vae.config.scaling_factor)

    def _scale(self) -> None:
        c = self.config
        self.parts.vae.eval()
        chunks = []
        n = 0
        step = 0
        while n < c.scale_images:
            images, _ = self.data.batch(10_000_000 + step, min(c.vae_batch, c.scale_images - n))
            chunks.append(self._latents(images).flatten())
            n += images.shape[0]
            step += 1
        std = float(torch.cat(chunks).std())
        self.state.scaling_factor = 1.0 / std
        self.parts.vae.register_to_config(scaling_factor=self.state.scaling_factor)
        self.log(f"[scale] latent std {std:.4f} over {n} images: scaling_factor {self.state.scaling_factor:.5f}")

    def _token_ids(self, captions: list[str]) -> Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self._token_cache]
        if missing:
            tok = self.parts.tokenizer
            ids = tok(missing, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(self.device)
            for caption, row in zip(missing, ids):
                self._token_cache[caption] = row
        return torch.stack([self._token_cache[c] for c in captions])

    def _unet_step(self, step: int) -> float:
        c = self.config
        images, captions = self.data.batch(step, c.unet_batch)
        latents = self._latents(images)
        generator = torch.Generator(device=self.device).manual_seed(stream_seed(c.seed, 5, step))
        noised = add_noise(latents, self.alphas_cumprod, generator)
        with self.autocast:
            emb = self.parts.text_encoder(self._token_ids(captions), return_dict=False)[0]
            pred = self.parts.unet(noised.noisy, noised.t, encoder_hidden_states=emb, return_dict=False)[0].float()
        loss = min_snr_loss(pred, noised, latents, c.min_snr_gamma, c.arch.prediction_type)
        lr = c.unet_lr * min(1.0, (step + 1) / max(1, c.warmup_steps))
        for g in self.unet_opt.param_groups:
            g["lr"] = lr
        self.unet_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet_params, c.grad_clip)
        self.unet_opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach().float() for p in self.unet_params], 1.0 - c.ema_decay)
        return float(loss.detach())

    # ------------------------------------------------------------------ the run

    def run(self, stop_after_minutes: float | None = None, checkpoint_every: int = 1000, log_every: int = 50,
            extra_card: dict[str, Any] | None = None) -> str:
        """Advance until done or out of time; returns the phase reached ('done' when finished)."""
        c = self.config
        deadline = time.time() + 60.0 * stop_after_minutes if stop_after_minutes else math.inf
        log_path = self.out / "train_log.jsonl"
        totals = {"vae": c.vae_steps, "unet": c.unet_steps}
        while self.state.phase != "done":
            phase = self.state.phase
            if phase == "scale":
                t0 = time.time()
                self._scale()
                self.state.seconds["scale"] = self.state.seconds.get("scale", 0.0) + time.time() - t0
                self.state.phase, self.state.step = "unet", 0
                continue
            total = totals[phase]
            window: list[float] = []
            t_window = time.time()
            while self.state.step < total:
                step = self.state.step
                loss = self._vae_step(step) if phase == "vae" else self._unet_step(step)
                self.state.step += 1
                window.append(loss)
                if self.state.step % log_every == 0 or self.state.step == total:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize()
                    now = time.time()
                    spent = now - t_window
                    self.state.seconds[phase] = self.state.seconds.get(phase, 0.0) + spent
                    batch = c.vae_batch if phase == "vae" else c.unet_batch
                    row = {"phase": phase, "step": self.state.step, "loss": sum(window) / len(window),
                           "images_per_s": len(window) * batch / max(spent, 1e-9),
                           "minutes": sum(self.state.seconds.values()) / 60.0}
                    with log_path.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(row) + "\n")
                    self.log(f"[{phase}] step {self.state.step}/{total} loss {row['loss']:.4f} "
                             f"{row['images_per_s']:.0f} img/s, {row['minutes']:.1f} min in all")
                    window, t_window = [], now
                if self.state.step % checkpoint_every == 0:
                    self.save_checkpoint()
                if time.time() > deadline and self.state.step < total:
                    self.save_checkpoint()
                    self.write_folder(extra_card, finished=False)
                    self.log(f"paused in phase {phase} at step {self.state.step}: --resume continues")
                    return phase
            self.state.phase = PHASES[PHASES.index(phase) + 1]
            # Once done, the step stays at the total: the card records how many UNet steps the weights had.
            self.state.step = total if self.state.phase == "done" else 0
            self.save_checkpoint()
        self.write_folder(extra_card, finished=True)
        return "done"

    def write_folder(self, extra_card: dict[str, Any] | None, finished: bool) -> Path:
        """The diffusers folder from the EMA weights, its card, and the loss curve."""
        live = [p.detach().clone() for p in self.unet_params]
        with torch.no_grad():
            for p, e in zip(self.unet_params, self.ema):
                p.copy_(e)
        card = {"config": self.config.as_dict(), "run": asdict(self.state), "finished": finished,
                **(extra_card or {})}
        folder = save_folder(self.parts, self.out / "world-sd", card)
        with torch.no_grad():
            for p, saved in zip(self.unet_params, live):
                p.copy_(saved)
        log = self.out / "train_log.jsonl"
        if log.exists():
            (folder / "train_log.jsonl").write_bytes(log.read_bytes())
            plot_losses(log, folder / "loss.png")
        return folder


def plot_losses(log: Path, png: Path, width: int = 640, height: int = 360) -> None:
    """Log10 loss against step, one panel per phase (PIL only: the product ships no plotting library)."""
    from PIL import Image, ImageDraw

    rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    phases = list(dict.fromkeys(r["phase"] for r in rows))  # world-SD's vae, unet; its IP-Adapter's ip
    image = Image.new("RGB", (width, height * len(phases) or height), "white")
    draw = ImageDraw.Draw(image)
    for k, phase in enumerate(phases):
        pts = [(r["step"], math.log10(max(r["loss"], 1e-8))) for r in rows if r["phase"] == phase]
        x0, y0, w, h = 60, k * height + 30, width - 80, height - 60
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        lo, hi = min(ys), max(ys)
        hi = hi if hi > lo else lo + 1e-3
        draw.rectangle([x0, y0, x0 + w, y0 + h], outline="black")
        draw.text((x0, y0 - 20), f"{phase}: log10 loss against step (last {10 ** ys[-1]:.4f})", fill="black")
        draw.text((4, y0), f"{hi:.2f}", fill="black")
        draw.text((4, y0 + h - 10), f"{lo:.2f}", fill="black")
        draw.text((x0 + w - 60, y0 + h + 5), f"{xs[-1]}", fill="black")
        line = [(x0 + w * (x - xs[0]) / max(1, xs[-1] - xs[0]), y0 + h * (hi - y) / (hi - lo)) for x, y in pts]
        if len(line) > 1:
            draw.line(line, fill="blue", width=2)
    image.save(png)


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parents[2]).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.worldsd.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, log, world-sd/)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="the toy architecture and step counts (tests)")
    parser.add_argument("--vae-steps", type=int, help="VAE steps [4000]")
    parser.add_argument("--unet-steps", type=int, help="UNet steps [12000]; raise it with --resume to train on")
    parser.add_argument("--unet-batch", type=int, help="UNet batch [256]")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--init-from", type=Path, help="start the UNet phase from a saved world-SD folder")
    parser.add_argument("--stop-after-minutes", type=float, help="checkpoint and stop after this long")
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    parser.add_argument("--log-every", type=int, default=50)
    args = parser.parse_args(argv)

    from backend.priors import resolve_device

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    config = TrainConfig.tiny() if args.tiny else TrainConfig(seed=args.seed)
    overrides = {k: v for k, v in (("vae_steps", args.vae_steps), ("unet_steps", args.unet_steps),
                                   ("unet_batch", args.unet_batch)) if v is not None}
    config = replace(config, seed=args.seed, **overrides)
    args.out.mkdir(parents=True, exist_ok=True)
    trainer = WorldSDTrainer(args.out, config, device, log=lambda m: print(m, flush=True))
    if args.resume and trainer.checkpoint_path.exists():
        trainer.load_checkpoint()
        print(f"resumed: phase {trainer.state.phase}, step {trainer.state.step}", flush=True)
    elif args.resume:
        print(f"no checkpoint at {trainer.checkpoint_path}: starting from nothing", flush=True)
    elif args.init_from is not None:
        trainer.init_from_folder(args.init_from)
        print(f"initialised from {args.init_from}: UNet step {trainer.state.step}", flush=True)
    elif trainer.checkpoint_path.exists():
        raise SystemExit(f"{trainer.checkpoint_path} exists: pass --resume to continue it, or another --out")
    if trainer.state.phase == "done" and trainer.state.step < config.unet_steps:
        trainer.state.phase = "unet"  # more UNet steps asked for on resume
    card = {"command": " ".join(["python -m backend.worldsd.train", *(argv if argv is not None else sys.argv[1:])]),
            "commit": _git_commit(), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    phase = trainer.run(args.stop_after_minutes, args.checkpoint_every, args.log_every, card)
    write_json(args.out / "status.json", {"phase": phase, "step": trainer.state.step,
                                                 "seconds": trainer.state.seconds})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
