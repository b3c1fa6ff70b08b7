"""Stable Diffusion 1.x / 2.x as a DiffusionPrior.

Loads the four components of a diffusers Stable Diffusion folder (or hub id) one by one rather than through
a pipeline: the prior needs only the UNet, the VAE, the text encoder with its tokenizer, and the training
schedule's cumulative alphas. Predictions always come back as epsilon, whatever the model was trained to
predict, so methods never see the model's parameterisation.

The module also builds randomly initialised models of the same code path from configs written here
(``build_random_pipeline_components``), used by the tests (tiny sizes) and by GPU benchmarks (SD 2.1-base's
full architecture) on machines that cannot download weights.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from backend.priors.acceleration import (
    Acceleration,
    GraphedDifferentiable,
    GraphedInference,
    prepare_modules,
    to_layout,
)
from backend.priors.base import BranchImage, DiffusionPrior, ImagePrompt, PriorError, PromptSet

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

    from backend.scene.cameras import Views

RandomSize = Literal["tiny", "sd21-base", "sd15"]

_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
# The subfolders of a Stable Diffusion diffusers folder that the prior loads.
PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_SUPPORTED_PREDICTIONS = ("epsilon", "v_prediction")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """float16 on CUDA (SD's weights are published and run in half precision), float32 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


class StableDiffusionPrior(DiffusionPrior):
    """Noise predictions of a Stable Diffusion 1.x/2.x UNet conditioned on CLIP text embeddings.

    All weights are frozen. The UNet and the text encoder run without autograd; the VAE encoder keeps it,
    so gradients flow from latents back to the rendered images.

    With an IP-Adapter (``image_encoder`` given and the UNet holding diffusers' IP attention processors, see
    backend/priors/ip_adapter.py) it also answers the image-prompt branches, in the same UNet call as the text
    branches: each row of the batch carries its own image embedding (the reference's, or zeros for ``image_null``
    and for text rows) and its own IP scale through diffusers' ``ip_adapter_masks`` (a 1x1 mask per row, spread
    over every layer's queries): ``ip_scale`` on image rows, 0 on text rows, so a text row is the plain prior
    exactly. The processors' own scale stays 1, so a captured CUDA graph does not freeze one job's scale.
    """

    camera_aware = False

    def __init__(
        self,
        unet: "UNet2DConditionModel",
        vae: "AutoencoderKL",
        text_encoder: "CLIPTextModel",
        tokenizer: "CLIPTokenizer",
        scheduler: "DDPMScheduler",
        *,
        name: str,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        acceleration: Acceleration | None = None,
        image_encoder: "CLIPVisionModelWithProjection | None" = None,
        ip_adapter: str = "",
    ) -> None:
        from backend.priors.ip_adapter import has_adapter, ip_processors

        self.name = name
        self.device = torch.device(device)
        self.dtype = dtype if dtype is not None else default_dtype(self.device)

        self.prediction_type = str(scheduler.config.prediction_type)
        if self.prediction_type not in _SUPPORTED_PREDICTIONS:
            raise PriorError(
                f"model '{name}' predicts '{self.prediction_type}'; this prior supports "
                f"{' and '.join(_SUPPORTED_PREDICTIONS)} models (Stable Diffusion 1.x/2.x)"
            )

        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.image_encoder = image_encoder
        self.ip_adapter = ip_adapter
        if (image_encoder is None) != (not has_adapter(unet)):
            raise PriorError(f"model '{name}': an IP-Adapter needs both its UNet weights and its image encoder "
                             "(backend/priors/ip_adapter.py install_adapter and load_adapter)")
        self.supports_image_prompts = image_encoder is not None
        for _, processor in ip_processors(unet):
            processor.scale = [1.0] * len(processor.scale)  # the per-row scale rides in the masks
        modules = (unet, vae, text_encoder) + ((image_encoder,) if image_encoder is not None else ())
        for module in modules:
            # Cast only when needed: diffusers warns on every dtype `.to()`, even a no-op one.
            if next(module.parameters()).dtype != self.dtype:
                module.to(dtype=self.dtype)
            module.to(device=self.device)
            module.eval()
            module.requires_grad_(False)
        self.acceleration = acceleration if acceleration is not None else Acceleration()
        prepare_modules(unet, vae, self.acceleration, self.device)
        graphs = self.device.type == "cuda" and self.acceleration.cuda_graphs
        self._unet_call = GraphedInference(self._unet_eager) if graphs else self._unet_eager
        encode = self._encode_eager
        if self.device.type == "cuda" and self.acceleration.compile_encoder:
            encode = torch.compile(encode, dynamic=False)
        self._encode_call = GraphedDifferentiable(encode) if graphs and not self.acceleration.compile_encoder else encode

        # The schedule the model was trained with; kept in float32 whatever the weights' dtype.
        self.alphas_cumprod = scheduler.alphas_cumprod.detach().to(self.device, torch.float32).clone()

        sample_size = unet.config.sample_size
        if not isinstance(sample_size, int):
            h, w = sample_size
            if h != w:
                raise PriorError(f"model '{name}' has a non-square latent size {tuple(sample_size)}")
            sample_size = int(h)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.sample_shape = (int(unet.config.in_channels), sample_size, sample_size)
        self.image_size = sample_size * self.vae_scale_factor
        self.scaling_factor = float(vae.config.scaling_factor)
        # SD 1/2 VAEs have no shift; later VAEs (SD3, Flux) do. Handling it costs nothing.
        shift = getattr(vae.config, "shift_factor", None)
        self.shift_factor = float(shift) if shift is not None else 0.0

        # Prompt string -> [L, D] embedding in the model dtype. A job uses a handful of prompts for
        # thousands of steps, so each is encoded once.
        self._text_cache: dict[str, Tensor] = {}
        # The job's reference image and its embedding [D] (model dtype): encoded once per reference.
        self._image_cache: tuple[Tensor, Tensor] | None = None
        # The last call's per-branch image rows and gates (_image_rows), with the reference tensors they read.
        self._rows_cache: tuple[tuple, tuple, Tensor, Tensor] | None = None

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        ip_adapter: str = "",
    ) -> "StableDiffusionPrior":
        """Load a Stable Diffusion 1.x/2.x local diffusers folder or hub id; PriorError if it cannot be found.

        A hub id is looked up in the Hugging Face cache first, so a cached model loads without any network
        call; only when it is missing there, and HF_HUB_OFFLINE is not set, is it downloaded. ``ip_adapter``
        (the setting of that name; empty: none) adds an IP-Adapter the same way (backend/priors/ip_adapter.py).
        """
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from huggingface_hub import constants as hf_constants
        from transformers import CLIPTextModel, CLIPTokenizer

        device = torch.device(device)
        dtype = dtype if dtype is not None else default_dtype(device)
        path = Path(model).expanduser()
        is_folder = path.is_dir()
        if not is_folder and (_looks_like_path(model) or not _is_valid_repo_id(model)):
            raise PriorError(
                f"Stable Diffusion model '{model}' not found: there is no folder {path.resolve()}. "
                f"Pass a local diffusers folder (with unet/, vae/, text_encoder/, tokenizer/, scheduler/) "
                f"with --model, or a hub id such as stabilityai/stable-diffusion-2-1-base; to download one, run "
                f"`huggingface-cli download stabilityai/stable-diffusion-2-1-base` on a machine with internet."
            )
        source = str(path) if is_folder else model

        offline = bool(hf_constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE_VALUES
        # Cache first (no network), then the hub unless offline. A local folder needs one attempt.
        attempts = [True] if (is_folder or offline) else [True, False]
        errors: list[BaseException] = []
        for local_only in attempts:
            try:
                kw: dict[str, Any] = {"local_files_only": local_only}
                unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **kw)
                vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **kw)
                text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kw)
                tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw)
                # Any SD scheduler config (PNDM, DDIM, ...) carries the training betas; DDPM reads them all.
                scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kw)
                break
            except (OSError, ValueError) as err:  # huggingface_hub's not-found errors are OSErrors
                errors.append(err)
        else:
            cause = errors[-1]
            missing = [p for p in PARTS if not (path / p).is_dir()]
            if is_folder and not missing:
                # Every part is there, so a file in one is missing, truncated or corrupt: the cause names it.
                where = f"a file in the folder {path.resolve()} is missing or cannot be read (truncated or corrupt)"
                fix = ("restore that file (a model shipped in the repository's models/ folder: `git checkout -- "
                       "models/`), or fetch the model again")
            elif is_folder:
                where = (f"the folder {path.resolve()} is not a complete Stable Diffusion diffusers folder "
                         f"(no {', '.join(p + '/' for p in missing)})")
                fix = (
                    "it needs unet/, vae/, text_encoder/, tokenizer/ and scheduler/ subfolders; download a full "
                    f"model with `huggingface-cli download stabilityai/stable-diffusion-2-1-base --local-dir "
                    f"{path}` on a machine with internet"
                )
            else:
                missed = (
                    "HF_HUB_OFFLINE is set, so nothing was downloaded"
                    if offline
                    else "downloading it from the hub failed"
                )
                where = (
                    f"it is not a local folder ({path.resolve()} does not exist), it is not (fully) in the "
                    f"Hugging Face cache ({hf_constants.HF_HUB_CACHE}), and {missed}"
                )
                fix = (
                    f"download it with `huggingface-cli download {model}` on a machine with internet (into the "
                    f"same HF_HOME / HF_HUB_CACHE), or pass a local folder with --model"
                )
            raise PriorError(
                f"cannot load Stable Diffusion model '{model}': {where}; {fix}. "
                f"({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''})"
            ) from cause

        image_encoder = None
        if ip_adapter:
            from backend.priors.ip_adapter import install_adapter, load_adapter

            state, image_encoder = load_adapter(ip_adapter, dtype)
            install_adapter(unet, state, name=f"IP-Adapter '{ip_adapter}'")
        return cls(unet, vae, text_encoder, tokenizer, scheduler, name=model, device=device, dtype=dtype,
                   image_encoder=image_encoder, ip_adapter=ip_adapter)

    # ------------------------------------------------------------------ DiffusionPrior

    def check_prompts(self, prompts: PromptSet) -> None:
        """Raise PriorError for a prompt longer than the text encoder reads.

        SD silently truncates at 77 tokens; a truncated target-negative prompt would lose exactly the
        descriptors that tell it apart from the target, so a clear error is better than a quiet no-op.
        """
        limit = int(self.tokenizer.model_max_length)
        for text in {prompts.target, prompts.negative, prompts.target_negative}:
            n = len(self.tokenizer(text, truncation=False, verbose=False).input_ids)
            if n > limit:
                raise PriorError(
                    f"prompt is {n} tokens long but the text encoder of '{self.name}' reads at most {limit} "
                    f"(start and end tokens included); shorten it: '{text}'"
                )

    def encode(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B C h w"]:
        """Images in [0, 1] -> scaled latents, differentiable w.r.t. ``images``.

        Uses the posterior's mean rather than a sample: score distillation wants a deterministic map from
        render to latent, so that the only noise in the gradient is the diffusion noise the method injects
        (a sample adds a second, useless noise term and makes the target depend on the draw).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"encode expects images of shape [B, 3, H, W], got {tuple(images.shape)}")
        s = self.image_size
        x = images.to(self.device, torch.float32)
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        x = to_layout((x * 2.0 - 1.0).to(self.dtype), self.acceleration.vae_channels_last)
        latents = self._encode_call(x)
        return ((latents - self.shift_factor) * self.scaling_factor).float()

    def sample_reference(self, prompts: PromptSet, generator: torch.Generator) -> Float[Tensor, "3 H W"]:
        """ModeDreamer's default reference: the model's own image of the prompt (DDIM 50 steps, CFG 7.5,
        backend/priors/sampling.py), seeded by ``generator``."""
        from backend.priors import sampling

        return sampling.ddim_sample(self, prompts, generator, steps=sampling.REFERENCE_STEPS)

    def _encode_eager(self, x: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B C h w"]:
        return self.vae.encode(x).latent_dist.mean

    def _unet_eager(self, sample: Tensor, t: Tensor, emb: Tensor, image_embeds: Tensor | None = None,
                    gate: Tensor | None = None) -> Tensor:
        if image_embeds is None:
            return self.unet(sample, t, encoder_hidden_states=emb, return_dict=False)[0]
        # image_embeds [R, 1, D]: one image per row; gate [R, 1, 1, 1]: each row's IP scale (diffusers' mask).
        return self.unet(sample, t, encoder_hidden_states=emb, added_cond_kwargs={"image_embeds": [image_embeds]},
                         cross_attention_kwargs={"ip_adapter_masks": [gate]}, return_dict=False)[0]

    def decode(self, samples: Float[Tensor, "B C h w"]) -> Float[Tensor, "B 3 H W"]:
        """Scaled latents -> images in [0, 1] at ``image_size``.

        Autograd is left to the caller (wrap in ``torch.no_grad()`` for previews).
        """
        z = samples.to(self.device, self.dtype) / self.scaling_factor + self.shift_factor
        images = self.vae.decode(to_layout(z, self.acceleration.vae_channels_last)).sample
        return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def _denoise(
        self,
        x_t: Float[Tensor, "B C h w"],
        t: Int[Tensor, "B"],
        texts: list[str],
        views: "Views | None",
        images: "list[BranchImage | None] | None" = None,
    ) -> Float[Tensor, "N B C h w"]:
        """One UNet call on N*B rows (text-major: rows i*B .. i*B+B-1 use texts[i]); epsilon in float32.

        ``images`` (with an IP-Adapter): one ``BranchImage`` or None per text; None is the plain prior."""
        del views  # SD is not camera-aware (view-dependent prompts are the caller's business)
        n, b = len(texts), x_t.shape[0]
        # Predictions are targets, never differentiated through (the v conversion would otherwise carry x_t's graph).
        x_t = x_t.detach().to(self.device, torch.float32)
        t = t.to(self.device).long().reshape(-1)
        if t.numel() == 1:  # one timestep for the whole batch
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"t must have shape [{b}], got {tuple(t.shape)}")

        emb = self._text_embeddings(texts)  # [N, L, D]
        with torch.no_grad():
            sample = to_layout(x_t.to(self.dtype).repeat(n, 1, 1, 1), self.acceleration.unet_channels_last)
            args = (sample, t.repeat(n), emb.repeat_interleave(b, dim=0))
            if self.image_encoder is not None:
                # An IP UNet always wants image embeddings; text rows get zeros at gate 0 (exactly the plain UNet).
                image_embeds, gate = self._image_rows(images if images is not None else [None] * n)
                args += (image_embeds.repeat_interleave(b, dim=0).unsqueeze(1),
                         gate.repeat_interleave(b, dim=0).view(n * b, 1, 1, 1))
            out = self._unet_call(*args)
        out = out.float().reshape(n, b, *out.shape[1:])

        if self.prediction_type == "v_prediction":
            # v = sqrt(abar) eps - sqrt(1 - abar) x0 and x_t = sqrt(abar) x0 + sqrt(1 - abar) eps
            # give eps = sqrt(abar) v + sqrt(1 - abar) x_t.
            abar = self.alphas_cumprod[t].view(1, b, 1, 1, 1)
            out = abar.sqrt() * out + (1.0 - abar).sqrt() * x_t.unsqueeze(0)
        return out

    # ------------------------------------------------------------------ helpers

    def _image_rows(self, images: "list[BranchImage | None]") -> tuple[Float[Tensor, "N D"], Float[Tensor, "N"]]:
        """Each branch's image embedding (zeros for a text branch and for ``image_null``, IP-Adapter's unconditional
        image input) and IP scale (0 for a text branch)."""
        assert self.image_encoder is not None
        # A job asks for the same branches every step: building the gates anew would copy them to the device
        # (a host sync on CUDA) each step, so the last answer is kept, keyed by what each branch shows.
        # Keyed by the image tensor, not the ImagePrompt: the 3D trainer wraps the job's one reference tensor in a
        # new ImagePrompt per view-prompt group and step.
        key = tuple(None if b is None else (id(b.prompt.image), b.zero, float(b.prompt.scale)) for b in images)
        held = tuple(b.prompt.image for b in images if b is not None)  # kept alive, so their ids stay theirs
        if self._rows_cache is not None and self._rows_cache[0] == key:
            return self._rows_cache[2], self._rows_cache[3]
        width = int(self.image_encoder.config.projection_dim)
        zero = torch.zeros(width, device=self.device, dtype=self.dtype)
        rows, gates = [], []
        for branch in images:
            rows.append(zero if branch is None or branch.zero else self._reference_embedding(branch.prompt))
            gates.append(0.0 if branch is None else float(branch.prompt.scale))
        out = torch.stack(rows), torch.tensor(gates, device=self.device, dtype=self.dtype)
        self._rows_cache = (key, held, *out)
        return out

    def _reference_embedding(self, prompt: ImagePrompt) -> Float[Tensor, "D"]:
        """The reference's CLIP image embedding, encoded once per reference image (a job keeps one tensor)."""
        from backend.priors.ip_adapter import image_embeddings

        if self._image_cache is None or self._image_cache[0] is not prompt.image:
            with torch.no_grad():
                embeds = image_embeddings(self.image_encoder, prompt.image.unsqueeze(0))[0]
            self._image_cache = (prompt.image, embeds.to(self.dtype))
        return self._image_cache[1]

    def _text_embeddings(self, texts: Sequence[str]) -> Float[Tensor, "N L D"]:
        """Embeddings of ``texts``, encoding the ones not cached yet in one text-encoder call."""
        missing = list(dict.fromkeys(s for s in texts if s not in self._text_cache))
        if missing:
            ids = self.tokenizer(
                missing,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            with torch.no_grad():
                # SD conditions on the last hidden state (SD 2's config already drops OpenCLIP's last layer).
                hidden = self.text_encoder(ids, return_dict=False)[0]
            for s, h in zip(missing, hidden):
                self._text_cache[s] = h
        return torch.stack([self._text_cache[s] for s in texts])


def _looks_like_path(model: str) -> bool:
    """Whether ``model`` can only be meant as a local path (hub ids are 'name' or 'owner/name')."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


def _is_valid_repo_id(model: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError:
        return False
    return True


# ---------------------------------------------------------------------- random models


def _unet_config(size: RandomSize) -> dict[str, Any]:
    # SD 1.5 and 2.1-base share the UNet's layout and differ in the text tokens' width and the attention heads.
    full = dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        flip_sin_to_cos=True,
        freq_shift=0,
        norm_num_groups=32,
        act_fn="silu",
    )
    if size == "sd15":  # CLIP ViT-L/14's 768-wide text tokens, 8 heads per layer
        return dict(full, cross_attention_dim=768, attention_head_dim=8, use_linear_projection=False)
    if size == "sd21-base":  # OpenCLIP ViT-H's 1024-wide tokens
        return dict(full, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
    return dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        flip_sin_to_cos=True,
        freq_shift=0,
        norm_num_groups=32,
        act_fn="silu",
    )


def _vae_config(size: RandomSize) -> dict[str, Any]:
    full = size in ("sd21-base", "sd15")
    channels = (128, 256, 512, 512) if full else (32, 64)
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=channels,
        layers_per_block=2 if full else 1,
        latent_channels=4,
        norm_num_groups=32,
        act_fn="silu",
        scaling_factor=0.18215,
        sample_size=512 if full else 16,
    )


def _text_config(size: RandomSize, tokenizer: "CLIPTokenizer") -> dict[str, Any]:
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=77,
    )
    if size == "sd15":
        # CLIP ViT-L/14's text tower, as SD 1.5 ships it.
        return dict(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            projection_dim=768,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            **ids,
        )
    if size == "sd21-base":
        # OpenCLIP ViT-H/14's text tower with its last layer dropped, as SD 2 ships it.
        return dict(
            vocab_size=49408,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=23,
            num_attention_heads=16,
            projection_dim=512,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
            **ids,
        )
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=32,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        **ids,
    )


def _scheduler_config(prediction_type: str) -> dict[str, Any]:
    # SD 1.x/2.x training schedule.
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        clip_sample=False,
        steps_offset=1,
    )


# Words the product itself puts into prompts (negative descriptors, view suffixes) plus a few common
# ones, so that the random tokenizer spends one token on each, as CLIP's real vocabulary does.
_RANDOM_TOKENIZER_WORDS = (
    "a an the of and with in on photo render view front side back overhead high quality detailed "
    "red green blue yellow white black orange purple pink brown grey gray cube sphere torus cone cylinder capsule"
)


def build_word_tokenizer(extra_words: str = "") -> "CLIPTokenizer":
    """A CLIP BPE tokenizer written from scratch (no download): known words shrink to one or a few tokens.

    Every lower-case letter, digit and punctuation mark is a token, alone and as a word end ("c</w>"),
    and merges build each word of a fixed list (the product's negative descriptors, view suffixes, common
    words) from left to right, so the product's long prompts fit SD's 77-token window as they do with
    CLIP's real vocabulary. (BPE applies merges by rank across words, so a word can stop a merge or two
    short of one token when an earlier word's chain fires inside it; longest words go first to keep that rare.) Random weights make the exact ids irrelevant; what matters is that different
    texts map to different ids and that everything is padded to 77 like SD's tokenizer.
    """
    import re
    import string

    from transformers import CLIPTokenizer

    from shared.settings import BSD_NEGATIVE, CSD_NEGATIVE, NFSD_NEGATIVE, TARGET_NEGATIVE_DESCRIPTORS

    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    text = " ".join((_RANDOM_TOKENIZER_WORDS, TARGET_NEGATIVE_DESCRIPTORS, NFSD_NEGATIVE, CSD_NEGATIVE,
                     BSD_NEGATIVE, extra_words))
    words = sorted(set(re.findall(r"[a-z]+", text.lower())), key=lambda w: (-len(w), w))
    merges: list[str] = []
    known = set(tokens)
    for word in words:
        if len(word) < 2:
            continue
        # Left-to-right merges: "red" -> ("r", "e") -> "re", ("re", "d</w>") -> "red</w>".
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            merged = left + right
            if merged not in known:
                merges.append(f"{left} {right}")
                tokens.append(merged)
                known.add(merged)
            left = merged
    vocab = {tok: i for i, tok in enumerate(tokens)}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        # The tokenizer reads both files now and keeps nothing open, so the folder can go.
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=77)


def build_random_pipeline_components(
    size: RandomSize = "tiny",
    *,
    prediction_type: str = "epsilon",
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Randomly initialised SD components: keys unet, vae, text_encoder, tokenizer, scheduler.

    ``"sd21-base"`` is Stable Diffusion 2.1-base's full architecture (UNet ~866 M parameters); ``"tiny"`` the
    same block types at toy widths, for tests. Weights are created directly on ``device`` in float32, from a
    private RNG stream seeded with ``seed`` (the caller's global RNG state is left untouched).
    """
    if size not in ("tiny", "sd21-base", "sd15"):
        raise ValueError(f"size must be 'tiny', 'sd21-base' or 'sd15', got {size!r}")
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    device = torch.device(device)
    tokenizer = build_word_tokenizer()
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**_unet_config(size))
        vae = AutoencoderKL(**_vae_config(size))
        text_encoder = CLIPTextModel(CLIPTextConfig(**_text_config(size, tokenizer)))
    scheduler = DDPMScheduler(**_scheduler_config(prediction_type))
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def save_random_pipeline(
    folder: str | os.PathLike[str],
    size: RandomSize = "tiny",
    *,
    prediction_type: str = "epsilon",
    seed: int = 0,
) -> Path:
    """Write random SD components in the diffusers folder layout, loadable by ``from_pretrained(folder)``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts = build_random_pipeline_components(size, prediction_type=prediction_type, seed=seed)
    for name, part in parts.items():
        part.save_pretrained(folder / name)
    write_pipeline_index(folder)
    return folder


def write_pipeline_index(folder: Path) -> None:
    """``model_index.json`` as a StableDiffusionPipeline writes it, so diffusers' own pipeline loader accepts a folder
    whose parts were saved one by one."""
    import diffusers

    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def build_random_sd21_base(
    device: torch.device | str = "cpu", dtype: torch.dtype | None = None, *, seed: int = 0,
    acceleration: Acceleration | None = None,
) -> StableDiffusionPrior:
    """A prior with random weights of SD 2.1-base's full architecture (for benchmarks; no download)."""
    parts = build_random_pipeline_components("sd21-base", seed=seed, device=device)
    return StableDiffusionPrior(**parts, name="random-sd21-base", device=device, dtype=dtype,
                                acceleration=acceleration)


def build_random_sd15_ip(
    device: torch.device | str = "cpu", dtype: torch.dtype | None = None, *, seed: int = 0,
    acceleration: Acceleration | None = None,
) -> StableDiffusionPrior:
    """A prior with random weights of SD 1.5 + h94's SD 1.5 IP-Adapter (ViT-H/14 image encoder), for measuring ISD's
    ms per step on a GPU without downloading anything. The adapter goes in through diffusers' own loader."""
    from backend.priors.ip_adapter import build_image_encoder, initial_adapter_state, install_adapter

    parts = build_random_pipeline_components("sd15", seed=seed, device=device)
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.device(device):
        torch.manual_seed(seed + 2)
        encoder = build_image_encoder("vit-h")
    state = initial_adapter_state(parts["unet"], int(encoder.config.projection_dim), from_text=False,
                                  generator=generator)
    install_adapter(parts["unet"], state)
    return StableDiffusionPrior(**parts, name="random-sd15-ip", device=device, dtype=dtype,
                                acceleration=acceleration, image_encoder=encoder, ip_adapter="random")
