"""Train an IP-Adapter for world-SD: the image prompt ISD's Stable Diffusion path reads (ModeDreamer's IP prior).

    python -m backend.worldsd.train_ip --out runs/world-sd-ip [--base models/world-sd] [--device cuda] [--resume]
                                       [--steps N] [--stop-after-minutes M]

world-SD (``--base``, a saved world-SD folder) stays frozen: UNet, VAE and text encoder. Trained from nothing: the
image encoder (a small ``CLIPVisionModelWithProjection`` built from a config, since no CLIP weights can be downloaded
here), the IP-Adapter's image projection and the key/value maps of its image tokens in every cross-attention layer
(started from the text keys/values, as the IP-Adapter paper does). Data (``backend/worldsd/ip_data.py``): a clean
render of one object from one view is the reference; the same object from another view, with its caption, is the
image to denoise, its caption more often leaving the colour or shape open than world-SD's (what the reference then
decides); 10% of references are dropped to a zero image embedding. Loss: world-SD's own, epsilon MSE with
min-SNR weighting on SD's schedule; the saved weights are an EMA.

Same conventions as world-SD's trainer (``backend/worldsd/train.py``): ``OUT/checkpoint.pt`` every
``--checkpoint-every`` steps and when ``--stop-after-minutes`` runs out, ``--resume`` continues exactly (every batch
and noise draw seeded by (seed, step)), and the adapter folder ``OUT/world-sd-ip`` (``ip-adapter.safetensors`` and
``image_encoder/``, fp16: what ``StableDiffusionPrior.from_pretrained(..., ip_adapter=FOLDER)`` and diffusers'
``load_ip_adapter`` read) with ``training.json``, the loss log and ``loss.png``, at the end and when paused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from backend.files import write_json
from backend.priors.ip_adapter import (
    adapter_parameters,
    adapter_state,
    build_image_encoder,
    clip_pixels,
    initial_adapter_state,
    install_adapter,
    save_adapter,
)
from backend.worldsd.data import CaptionConfig, WorldImages, stream_seed
from backend.worldsd.ip_data import WorldPairs
from backend.worldsd.train import _git_commit, add_noise, min_snr_loss, plot_losses

FOLDER = "world-sd-ip"


@dataclass(frozen=True)
class IPTrainConfig:
    """Everything that decides what a run makes (saved in the checkpoint and the model card)."""

    seed: int = 0
    encoder: str = "world"  # backend/priors/ip_adapter.py random_image_encoder_config
    steps: int = 2000
    batch: int = 256
    adapter_lr: float = 1e-4  # the IP-Adapter paper's
    encoder_lr: float = 3e-4  # the encoder starts from nothing, as world-SD's UNet did at this rate
    warmup_steps: int = 200
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0
    grad_clip: float = 1.0
    reference_dropout: float = 0.1
    # Captions that leave the colour or the shape open (or say nothing) are where the reference carries what the text
    # does not, the case ISD asks the adapter about ("a cube" + a blue cube): three times world-SD's shares of them.
    # With a full caption the reference only repeats the text, which teaches the adapter little.
    shape_only: float = 0.3
    colour_only: float = 0.2
    caption_dropout: float = 0.15
    pool_views: int = 512
    refresh_images: int = 12_800

    @classmethod
    def tiny(cls) -> "IPTrainConfig":
        return cls(encoder="tiny", steps=4, batch=4, warmup_steps=2, pool_views=4, refresh_images=64)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class IPRunState:
    step: int = 0
    seconds: float = 0.0


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class WorldSDIPTrainer:
    """One IP-Adapter training run's state; ``run`` advances it until done or out of time."""

    def __init__(self, out: Path, base: Path, config: IPTrainConfig, device: torch.device,
                 log: Callable[[str], None] = print) -> None:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.out, self.base, self.config, self.device, self.log = out, base, config, device, log
        kw: dict[str, Any] = dict(local_files_only=True)
        self.unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", torch_dtype=torch.float32, **kw)
        self.vae = AutoencoderKL.from_pretrained(base, subfolder="vae", torch_dtype=torch.float32, **kw)
        self.text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", dtype=torch.float32, **kw)
        self.tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", **kw)
        scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler", **kw)
        for m in (self.unet, self.vae, self.text_encoder):
            m.requires_grad_(False)  # world-SD stays as shipped; only what the adapter adds trains
        self.vae.eval()
        self.text_encoder.eval()

        # The new parts, from a private RNG stream: the encoder from its config, the adapter from the text k/v.
        with torch.random.fork_rng():
            torch.manual_seed(stream_seed(config.seed, 10, 0))
            self.encoder = build_image_encoder(config.encoder)
        state = initial_adapter_state(self.unet, int(self.encoder.config.projection_dim), from_text=True,
                                      generator=torch.Generator().manual_seed(stream_seed(config.seed, 11, 0)))
        install_adapter(self.unet, state, name="world-SD's IP-Adapter")
        for m in (self.unet, self.vae, self.text_encoder, self.encoder):
            m.to(device)
        self.unet.train()  # no dropout in it; train() only marks intent
        self.encoder.train()
        self.adapter_params = adapter_parameters(self.unet)
        for p in self.adapter_params:
            p.requires_grad_(True)
        self.params = self.adapter_params + list(self.encoder.parameters())
        self.opt = torch.optim.AdamW(
            [{"params": self.adapter_params, "lr": config.adapter_lr},
             {"params": list(self.encoder.parameters()), "lr": config.encoder_lr}],
            weight_decay=config.weight_decay)
        self.ema = [p.detach().clone().float() for p in self.params]

        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.image_size = int(self.vae.config.sample_size)
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device, torch.float32)
        self.prediction_type = str(scheduler.config.prediction_type)
        captions = CaptionConfig(caption_dropout=config.caption_dropout, shape_only=config.shape_only,
                                 colour_only=config.colour_only)
        self.pairs = WorldPairs(WorldImages(self.image_size, device, seed=config.seed, pool_views=config.pool_views,
                                            refresh_images=config.refresh_images, captions=captions),
                                config.reference_dropout)
        self.state = IPRunState()
        self._text_cache: dict[str, Tensor] = {}
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        state = {"config": self.config.as_dict(), "base": str(self.base), "run": asdict(self.state),
                 "params": [p.detach() for p in self.params], "ema": self.ema, "opt": self.opt.state_dict()}
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path)

    def load_checkpoint(self) -> None:
        # weights_only: tensors, dicts and numbers, never arbitrary objects.
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        saved = {k: v for k, v in state["config"].items() if k != "steps"}
        if saved != {k: v for k, v in self.config.as_dict().items() if k != "steps"}:
            raise SystemExit(f"{self.checkpoint_path} was made with another configuration ({state['config']}); "
                             "train into a new --out or drop --resume")
        with torch.no_grad():
            for p, s in zip(self.params, state["params"]):
                p.copy_(s)
            for e, s in zip(self.ema, state["ema"]):
                e.copy_(s)
        self.opt.load_state_dict(state["opt"])
        self.state = IPRunState(**state["run"])

    # ------------------------------------------------------------------ one step

    def _text(self, captions: list[str]) -> Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self._text_cache]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids.to(self.device)
            with torch.no_grad():
                hidden = self.text_encoder(ids, return_dict=False)[0]
            for caption, h in zip(missing, hidden):
                self._text_cache[caption] = h
        return torch.stack([self._text_cache[c] for c in captions])

    def step(self, step: int) -> float:
        c = self.config
        batch = self.pairs.batch(step, c.batch)
        with torch.no_grad(), self.autocast:
            # The posterior mean, as the product's prior encodes renders.
            latents = self.vae.encode(batch.targets * 2.0 - 1.0).latent_dist.mean.float() * self.scaling_factor
        generator = torch.Generator(device=self.device).manual_seed(stream_seed(c.seed, 14, step))
        noised = add_noise(latents, self.alphas_cumprod, generator)
        text = self._text(batch.captions)
        with self.autocast:
            pixels = clip_pixels(batch.references, int(self.encoder.config.image_size))
            embeds = self.encoder(pixel_values=pixels).image_embeds
            # Reference dropout: a zero embedding, the unconditional image input ISD's image_null branch gives.
            embeds = embeds * batch.keep_reference.to(embeds.dtype).unsqueeze(1)
            pred = self.unet(noised.noisy, noised.t, encoder_hidden_states=text,
                             added_cond_kwargs={"image_embeds": [embeds.unsqueeze(1)]}, return_dict=False)[0].float()
        loss = min_snr_loss(pred, noised, latents, c.min_snr_gamma, self.prediction_type)  # as world-SD trained
        ramp = min(1.0, (step + 1) / max(1, c.warmup_steps))
        for group, lr in zip(self.opt.param_groups, (c.adapter_lr, c.encoder_lr)):
            group["lr"] = lr * ramp
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach().float() for p in self.params], 1.0 - c.ema_decay)
        return float(loss.detach())

    # ------------------------------------------------------------------ the run

    def run(self, stop_after_minutes: float | None = None, checkpoint_every: int = 500, log_every: int = 50,
            extra_card: dict[str, Any] | None = None) -> bool:
        """Advance until ``steps`` or out of time; True when finished."""
        c = self.config
        deadline = time.time() + 60.0 * stop_after_minutes if stop_after_minutes else math.inf
        log_path = self.out / "train_log.jsonl"
        window: list[float] = []
        t_window = time.time()
        while self.state.step < c.steps:
            loss = self.step(self.state.step)
            self.state.step += 1
            window.append(loss)
            if self.state.step % log_every == 0 or self.state.step == c.steps:
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                now = time.time()
                spent = now - t_window
                self.state.seconds += spent
                row = {"phase": "ip", "step": self.state.step, "loss": sum(window) / len(window),
                       "images_per_s": len(window) * c.batch / max(spent, 1e-9), "minutes": self.state.seconds / 60}
                with log_path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                self.log(f"[ip] step {self.state.step}/{c.steps} loss {row['loss']:.4f} "
                         f"{row['images_per_s']:.0f} img/s, {row['minutes']:.1f} min in all")
                window, t_window = [], now
            if self.state.step % checkpoint_every == 0:
                self.save_checkpoint()
            if time.time() > deadline and self.state.step < c.steps:
                self.save_checkpoint()
                self.write_folder(extra_card, finished=False)
                self.log(f"paused at step {self.state.step}: --resume continues")
                return False
        self.save_checkpoint()
        self.write_folder(extra_card, finished=True)
        return True

    def write_folder(self, extra_card: dict[str, Any] | None, finished: bool) -> Path:
        """The adapter folder from the EMA weights, its card, and the loss curve."""
        live = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, e in zip(self.params, self.ema):
                p.copy_(e)
        folder = save_adapter(self.out / FOLDER, adapter_state(self.unet), self.encoder, dtype=torch.float16)
        with torch.no_grad():
            for p, saved in zip(self.params, live):
                p.copy_(saved)
        unet_file = self.base / "unet" / "diffusion_pytorch_model.safetensors"
        card = {"config": self.config.as_dict(), "run": asdict(self.state), "finished": finished,
                "base": {"folder": str(self.base),
                         "unet_sha256": _file_sha256(unet_file) if unet_file.is_file() else None},
                **(extra_card or {})}
        (folder / "training.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        log = self.out / "train_log.jsonl"
        if log.exists():
            (folder / "train_log.jsonl").write_bytes(log.read_bytes())
            plot_losses(log, folder / "loss.png")
        return folder


def main(argv: list[str] | None = None) -> int:
    from backend.shipped_models import SHIPPED

    parser = argparse.ArgumentParser(prog="python -m backend.worldsd.train_ip", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help=f"run folder (checkpoint, log, {FOLDER}/)")
    parser.add_argument("--base", type=Path, default=SHIPPED["world-sd"][0], help="the world-SD folder [models/world-sd]")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="a toy encoder and step counts (tests)")
    parser.add_argument("--steps", type=int, help="training steps [2000]; raise it with --resume to train on")
    parser.add_argument("--batch", type=int, help="batch [256]")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--stop-after-minutes", type=float, help="checkpoint and stop after this long")
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--log-every", type=int, default=50)
    args = parser.parse_args(argv)

    from backend.priors import resolve_device

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    config = IPTrainConfig.tiny() if args.tiny else IPTrainConfig()
    overrides = {k: v for k, v in (("steps", args.steps), ("batch", args.batch)) if v is not None}
    config = replace(config, seed=args.seed, **overrides)
    args.out.mkdir(parents=True, exist_ok=True)
    trainer = WorldSDIPTrainer(args.out, args.base, config, device, log=lambda m: print(m, flush=True))
    if args.resume and trainer.checkpoint_path.exists():
        trainer.load_checkpoint()
        print(f"resumed at step {trainer.state.step}", flush=True)
    elif args.resume:
        print(f"no checkpoint at {trainer.checkpoint_path}: starting from nothing", flush=True)
    elif trainer.checkpoint_path.exists():
        raise SystemExit(f"{trainer.checkpoint_path} exists: pass --resume to continue it, or another --out")
    card = {"command": " ".join(["python -m backend.worldsd.train_ip", *(argv if argv is not None else sys.argv[1:])]),
            "commit": _git_commit(), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    finished = trainer.run(args.stop_after_minutes, args.checkpoint_every, args.log_every, card)
    write_json(args.out / "status.json", {"finished": finished, "step": trainer.state.step,
                                          "seconds": trainer.state.seconds})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
