"""world-SD's architecture: the diffusers and transformers classes any Stable Diffusion 1.x/2.x folder holds, sized
for the procedural world, and the folder they are saved as.

Sizes (docs/WORLD_SD.md says why): 128 px images, an ``AutoencoderKL`` with 4 latent channels and 8x down (16x16
latents), a ``UNet2DConditionModel`` with cross-attention at 16 and 8 latent pixels (about 18 M parameters), a
``CLIPTextModel`` of 4 layers over the product's word tokenizer (one token per word the product writes), SD's
scaled-linear training schedule with epsilon prediction. About 26 M parameters, 51 MB in fp16.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from backend.worldsd.data import vocabulary_words

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

@dataclass(frozen=True)
class Architecture:
    """The sizes that define a world-SD; ``tiny`` is the same code path at toy widths for CPU tests."""

    image_size: int = 128
    vae_channels: tuple[int, ...] = (32, 64, 128, 128)  # four levels: 8x down
    vae_layers: int = 1
    unet_channels: tuple[int, ...] = (64, 128, 256)
    unet_layers: int = 2
    attention_head_dim: int = 32
    text_width: int = 256
    text_layers: int = 4
    text_heads: int = 4
    prediction_type: str = "epsilon"

    @classmethod
    def tiny(cls) -> "Architecture":
        return cls(image_size=32, vae_channels=(32, 32, 32, 32), unet_channels=(32, 32), unet_layers=1,
                   attention_head_dim=8, text_width=32, text_layers=1, text_heads=2)

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Architecture":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@dataclass
class Components:
    """The five parts of a Stable Diffusion folder."""

    unet: "UNet2DConditionModel"
    vae: "AutoencoderKL"
    text_encoder: "CLIPTextModel"
    tokenizer: "CLIPTokenizer"
    scheduler: "DDPMScheduler"


def build_tokenizer() -> "CLIPTokenizer":
    from backend.priors.stable_diffusion import build_word_tokenizer

    return build_word_tokenizer(vocabulary_words())


def build_components(arch: Architecture, seed: int = 0, device: torch.device | str = "cpu") -> Components:
    """Freshly initialised parts (float32), from a private RNG stream seeded with ``seed``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer()
    levels = len(arch.unet_channels)
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.device(device):
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=min(32, arch.vae_channels[0]),
            down_block_types=("DownEncoderBlock2D",) * len(arch.vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(arch.vae_channels),
            block_out_channels=arch.vae_channels, layers_per_block=arch.vae_layers, act_fn="silu",
            sample_size=arch.image_size, scaling_factor=1.0,  # set from the trained latents' spread
        )
        unet = UNet2DConditionModel(
            sample_size=arch.latent_size, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
            block_out_channels=arch.unet_channels, layers_per_block=arch.unet_layers,
            cross_attention_dim=arch.text_width, attention_head_dim=arch.attention_head_dim,
            norm_num_groups=min(32, arch.unet_channels[0]), act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=arch.text_width, intermediate_size=4 * arch.text_width,
            num_hidden_layers=arch.text_layers, num_attention_heads=arch.text_heads, projection_dim=arch.text_width,
            max_position_embeddings=int(tokenizer.model_max_length), hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", prediction_type=arch.prediction_type,
                              clip_sample=False, steps_offset=1)
    return Components(unet, vae, text_encoder, tokenizer, scheduler)


def save_folder(parts: Components, folder: Path, card: dict[str, Any]) -> Path:
    """Write the parts as a diffusers Stable Diffusion folder in fp16 safetensors (what ``from_pretrained`` and
    diffusers' own pipeline loader read), with ``training.json`` holding how it was made."""
    from backend.priors.stable_diffusion import write_pipeline_index

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("unet", "vae", "text_encoder"):
        # A half-precision copy: casting the live module would round the weights a run goes on training.
        copy.deepcopy(getattr(parts, name)).to(torch.float16).save_pretrained(folder / name, safe_serialization=True)
    parts.tokenizer.save_pretrained(folder / "tokenizer")
    parts.scheduler.save_pretrained(folder / "scheduler")
    write_pipeline_index(folder)
    (folder / "training.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return folder
