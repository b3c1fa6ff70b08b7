"""IP-Adapter files for the Stable Diffusion prior: where they are, what they hold, and installing them.

An IP-Adapter (Ye et al. 2023, the image prompt of ModeDreamer's eq. 7) is two things beside an SD model:

- ``ip-adapter.safetensors``: the image projection (``image_proj.*``: a CLIP image embedding -> 4 extra
  cross-attention tokens) and the key/value maps those tokens get in every cross-attention layer
  (``ip_adapter.<n>.to_k_ip.weight`` / ``to_v_ip``). This is the flat layout diffusers' ``load_ip_adapter`` reads
  from a ``.safetensors`` file; the same dict split on its first dot is what ``UNet2DConditionModel.
  _load_ip_adapter_weights`` installs. Pickled ``.bin`` files are refused: loading one runs whatever it holds.
- ``image_encoder/``: a transformers ``CLIPVisionModelWithProjection`` folder, in the same folder as the weight
  file (h94/IP-Adapter's SD 1.5 layout: ``models/ip-adapter_sd15.safetensors`` beside ``models/image_encoder/``).

Where the setting ``ip_adapter`` points is decided in ``backend/ip_adapter_source.py`` (torch-free, so the server
checks it too).

The module also builds IP-Adapter weights for any UNet (random ones for tests and benchmarks, or the start of a
training: the image keys/values copied from the text ones, as the IP-Adapter paper initialises them) and reads the
installed weights back out of a UNet in the file layout, so what the trainer saves is what the loader reads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from backend.ip_adapter_source import (
    ALLOWED,
    ENCODER_FOLDER,
    WEIGHT_NAME,
    AdapterMissing,
    AdapterSource,
    missing_local_files,
    resolve_adapter,
)
from backend.priors.base import PriorError

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPVisionModelWithProjection

NUM_TOKENS = 4  # image tokens of the plain IP-Adapter (diffusers' ImageProjection for a "proj.weight" dict)
# CLIP's image normalisation (CLIPImageProcessor's defaults, OpenAI's constants), applied with torch ops.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}

AdapterState = dict[str, dict[str, Tensor]]  # {"image_proj": {...}, "ip_adapter": {...}}


def resolve(spec: str) -> AdapterSource:
    """``resolve_adapter`` with its refusal as a PriorError (what the prior's callers catch)."""
    try:
        return resolve_adapter(spec)
    except AdapterMissing as err:
        raise PriorError(str(err)) from None


def _offline() -> bool:
    from huggingface_hub import constants as hf_constants

    return bool(hf_constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE_VALUES


def _weight_file(source: AdapterSource) -> Path:
    """The local path of the weight file: in the folder, or in the Hugging Face cache (downloaded unless offline)."""
    if source.local:
        file = Path(source.root, source.subfolder, source.weight_name)
        if not file.is_file():
            raise PriorError(f"IP-Adapter '{source.spec}': no weight file {file.resolve()}. The folder needs "
                             f"{source.weight_name} (image_proj.* and ip_adapter.* tensors) and {ENCODER_FOLDER}/; "
                             f"ip_adapter may be {ALLOWED}")
        return file
    from huggingface_hub import hf_hub_download

    errors: list[BaseException] = []
    for local_only in ([True] if _offline() else [True, False]):  # the cache first: no network call
        try:
            return Path(hf_hub_download(source.root, source.weight_name, subfolder=source.subfolder or None,
                                        local_files_only=local_only))
        except Exception as err:  # noqa: BLE001 - huggingface_hub raises several unrelated types for "not there"
            errors.append(err)
    where = f"{source.root}/{source.subfolder + '/' if source.subfolder else ''}{source.weight_name}"
    missed = "HF_HUB_OFFLINE is set, so nothing was downloaded" if _offline() else "downloading it failed"
    raise PriorError(f"IP-Adapter '{source.spec}': {where} is not in the Hugging Face cache and {missed}; download "
                     f"it with `huggingface-cli download {source.root} {source.subfolder + '/' if source.subfolder else ''}"
                     f"{source.weight_name}` (and its {ENCODER_FOLDER}/) on a machine with internet, or pass a "
                     f"local folder. ({type(errors[-1]).__name__})") from errors[-1]


def read_adapter_file(file: Path) -> AdapterState:
    """The weight file split as diffusers' ``load_ip_adapter`` splits it; PriorError when it is not an IP-Adapter."""
    from safetensors import SafetensorError, safe_open

    state: AdapterState = {"image_proj": {}, "ip_adapter": {}}
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                head, _, rest = key.partition(".")
                if head in state:
                    state[head][rest] = f.get_tensor(key)
    except (SafetensorError, OSError) as err:
        raise PriorError(f"IP-Adapter weight file {file} cannot be read ({err}); restore or fetch it again") from err
    if not state["image_proj"] or not state["ip_adapter"]:
        raise PriorError(f"{file} holds no IP-Adapter: it needs image_proj.* and ip_adapter.* tensors")
    if "proj.weight" not in state["image_proj"]:
        raise PriorError(f"{file} is not a plain IP-Adapter (no image_proj.proj.weight): the Plus, Full-Face and "
                         "FaceID variants read other encoder outputs and are not supported")
    return state


def write_adapter_file(state: AdapterState, file: Path) -> Path:
    """``state`` in the flat ``image_proj.*`` / ``ip_adapter.*`` safetensors layout diffusers loads (fp16 is the
    caller's choice: tensors are written in their own dtype)."""
    from safetensors.torch import save_file

    flat = {f"{head}.{k}": v.detach().contiguous().cpu() for head, part in state.items() for k, v in part.items()}
    file.parent.mkdir(parents=True, exist_ok=True)
    save_file(flat, str(file))
    return file


def load_image_encoder(source: AdapterSource, dtype: torch.dtype) -> "CLIPVisionModelWithProjection":
    from transformers import CLIPVisionModelWithProjection

    if source.local:
        folder = Path(source.root, source.encoder_subfolder)
        missing = missing_local_files(source)
        if missing:
            raise PriorError(f"IP-Adapter '{source.spec}': no {' and no '.join(missing)}; its image encoder must be a "
                             f"CLIPVisionModelWithProjection saved with save_pretrained (safetensors) in "
                             f"{ENCODER_FOLDER}/ beside {source.weight_name}")
        return CLIPVisionModelWithProjection.from_pretrained(folder, dtype=dtype, local_files_only=True,
                                                             use_safetensors=True)
    errors: list[BaseException] = []
    for local_only in ([True] if _offline() else [True, False]):
        try:
            return CLIPVisionModelWithProjection.from_pretrained(source.root, subfolder=source.encoder_subfolder,
                                                                 dtype=dtype, local_files_only=local_only,
                                                                 use_safetensors=True)
        except (OSError, ValueError) as err:
            errors.append(err)
    raise PriorError(f"IP-Adapter '{source.spec}': its image encoder {source.root}/{source.encoder_subfolder} "
                     f"cannot be loaded (not cached{' and HF_HUB_OFFLINE is set' if _offline() else ''}); download "
                     f"it with `huggingface-cli download {source.root}` on a machine with internet "
                     f"({type(errors[-1]).__name__})") from errors[-1]


def load_adapter(spec: str, dtype: torch.dtype) -> tuple[AdapterState, "CLIPVisionModelWithProjection"]:
    """The weights and the image encoder ``spec`` names, both checked to fit each other."""
    source = resolve(spec)
    state = read_adapter_file(_weight_file(source))
    encoder = load_image_encoder(source, dtype)
    expected = int(state["image_proj"]["proj.weight"].shape[-1])
    given = int(encoder.config.projection_dim)
    if expected != given:
        raise PriorError(f"IP-Adapter '{spec}' projects image embeddings of width {expected}, but its image encoder "
                         f"gives {given}: the two files are from different adapters")
    return state, encoder


# ---------------------------------------------------------------------- the UNet side


def cross_attention_layers(unet: "UNet2DConditionModel") -> list[tuple[int, str, int]]:
    """(key id, processor name, hidden size) of every cross-attention layer, numbered as diffusers numbers the file's
    ``ip_adapter.<n>.*`` keys (1, 3, 5, ...: the original release counted self- and cross-attention together)."""
    out = []
    key_id = 1
    channels = list(unet.config.block_out_channels)
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or "motion_modules" in name:
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            hidden = channels[int(name[len("down_blocks.")])]
        out.append((key_id, name, hidden))
        key_id += 2
    return out


def initial_adapter_state(unet: "UNet2DConditionModel", embed_dim: int, *, from_text: bool,
                          generator: torch.Generator | None = None, std: float = 0.02) -> AdapterState:
    """IP-Adapter weights (float32, CPU) that fit ``unet`` and an image encoder of projection width ``embed_dim``.

    ``from_text``: the image keys/values start as the text cross-attention's (the IP-Adapter paper's
    initialisation, so training starts from attention the UNet already reads) and the projection at ``std``
    noise; otherwise everything is N(0, std) noise (random weights for tests and benchmarks)."""
    cross = int(unet.config.cross_attention_dim)
    modules = dict(unet.named_modules())

    def noise(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator) * std

    adapter: dict[str, Tensor] = {}
    for key_id, name, hidden in cross_attention_layers(unet):
        attn = modules[name.removesuffix(".processor")]
        for kv in ("k", "v"):
            if from_text:
                adapter[f"{key_id}.to_{kv}_ip.weight"] = getattr(attn, f"to_{kv}").weight.detach().float().cpu().clone()
            else:
                adapter[f"{key_id}.to_{kv}_ip.weight"] = noise(hidden, cross)
    if from_text:
        # Zero bias and shift: a zero image embedding then makes zero image tokens, so the untrained adapter's
        # unconditional image branch is exactly the text prior, and training starts there.
        image_proj = {"proj.weight": noise(NUM_TOKENS * cross, embed_dim), "proj.bias": torch.zeros(NUM_TOKENS * cross),
                      "norm.weight": torch.ones(cross), "norm.bias": torch.zeros(cross)}
    else:
        # Every tensor random, biases included, as in a trained adapter (h94's: a zero image embedding still gives
        # image tokens, LayerNorm's shift, so its unconditional image branch is not the text prior).
        image_proj = {"proj.weight": noise(NUM_TOKENS * cross, embed_dim), "proj.bias": noise(NUM_TOKENS * cross),
                      "norm.weight": 1.0 + noise(cross), "norm.bias": noise(cross)}
    return {"image_proj": image_proj, "ip_adapter": adapter}


def install_adapter(unet: "UNet2DConditionModel", state: AdapterState, name: str = "IP-Adapter") -> None:
    """Put the IP-Adapter into ``unet`` with diffusers' own loader (IP attention processors at scale 1, the image
    projection as ``encoder_hid_proj``); PriorError when the weights were made for another UNet."""
    expected = {f"{k}.to_{kv}_ip.weight" for k, _, _ in cross_attention_layers(unet) for kv in ("k", "v")}
    given = set(state["ip_adapter"])
    if expected - given:
        raise PriorError(f"{name} was made for another UNet: it has {len(given) // 2} cross-attention layers' "
                         f"weights, this UNet has {len(expected) // 2} (missing e.g. ip_adapter."
                         f"{min(expected - given)})")
    cross = int(unet.config.cross_attention_dim)
    proj = state["image_proj"]["proj.weight"]
    if proj.shape[0] != NUM_TOKENS * cross:
        raise PriorError(f"{name} projects to {proj.shape[0] // NUM_TOKENS}-wide tokens; this UNet's cross-attention "
                         f"reads {cross}: it was made for another model")
    unet._load_ip_adapter_weights([state], low_cpu_mem_usage=False)


def ip_processors(unet: "UNet2DConditionModel") -> list[tuple[str, Any]]:
    """The UNet's IP-Adapter attention processors, in the file's order."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0

    return [(n, p) for n, p in unet.attn_processors.items()
            if isinstance(p, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0))]


def has_adapter(unet: "UNet2DConditionModel") -> bool:
    return getattr(unet.config, "encoder_hid_dim_type", None) == "ip_image_proj" and bool(ip_processors(unet))


def adapter_state(unet: "UNet2DConditionModel") -> AdapterState:
    """The installed IP-Adapter read back in the file layout (``install_adapter``'s inverse)."""
    layer = unet.encoder_hid_proj.image_projection_layers[0]
    image_proj = {k.replace("image_embeds.", "proj."): v.detach().clone() for k, v in layer.state_dict().items()}
    names = {name: key_id for key_id, name, _ in cross_attention_layers(unet)}
    adapter = {}
    for name, proc in ip_processors(unet):
        key_id = names[name]
        adapter[f"{key_id}.to_k_ip.weight"] = proc.to_k_ip[0].weight.detach().clone()
        adapter[f"{key_id}.to_v_ip.weight"] = proc.to_v_ip[0].weight.detach().clone()
    return {"image_proj": image_proj, "ip_adapter": adapter}


def adapter_parameters(unet: "UNet2DConditionModel") -> list[torch.nn.Parameter]:
    """The parameters an IP-Adapter adds to ``unet`` (what its training updates)."""
    params = list(unet.encoder_hid_proj.parameters())
    for _, proc in ip_processors(unet):
        params += list(proc.parameters())
    return params


# ---------------------------------------------------------------------- the image side


def clip_pixels(images: Float[Tensor, "B 3 H W"], size: int) -> Float[Tensor, "B 3 S S"]:
    """CLIPImageProcessor's preprocessing in torch ops: centre square crop, bicubic (antialiased) resize to the
    encoder's ``image_size``, CLIP normalisation. Images are RGB in [0, 1]; no PIL round trip, and it runs batched
    on the device (the trainer preprocesses every reference this way too)."""
    h, w = images.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = images[..., top:top + side, left:left + side].float()
    if side != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    x = x.clamp(0.0, 1.0)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def image_embeddings(encoder: "CLIPVisionModelWithProjection",
                     images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B D"]:
    """The projected CLIP image embeddings the plain IP-Adapter reads (``image_embeds``)."""
    param = next(encoder.parameters())
    pixels = clip_pixels(images.to(param.device), int(encoder.config.image_size)).to(param.dtype)
    return encoder(pixel_values=pixels).image_embeds


def random_image_encoder_config(size: str = "tiny") -> dict[str, Any]:
    """CLIPVisionConfig fields: ``"tiny"`` for tests, ``"vit-h"`` the ViT-H/14 encoder of h94's SD 1.5 IP-Adapter
    (projection width 1024), ``"world"`` the small encoder world-SD's IP-Adapter trains from scratch."""
    if size == "vit-h":
        return dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                    image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu")
    if size == "world":
        return dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                    image_size=64, patch_size=8, projection_dim=256, hidden_act="quick_gelu")
    if size == "tiny":
        return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    image_size=32, patch_size=8, projection_dim=16, hidden_act="quick_gelu")
    raise ValueError(f"size must be 'tiny', 'world' or 'vit-h', got {size!r}")


def build_image_encoder(size: str = "tiny", **overrides: Any) -> "CLIPVisionModelWithProjection":
    """A randomly initialised ``CLIPVisionModelWithProjection`` (the caller seeds torch's RNG)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(**{**random_image_encoder_config(size), **overrides}))


def save_adapter(folder: Path, state: AdapterState, encoder: "CLIPVisionModelWithProjection",
                 dtype: torch.dtype = torch.float16) -> Path:
    """An IP-Adapter folder the loader (and diffusers' ``load_ip_adapter(folder, subfolder="", weight_name=
    "ip-adapter.safetensors")``) reads: the weight file and ``image_encoder/``, both in ``dtype``."""
    import copy

    folder = Path(folder)
    cast = {h: {k: v.to(dtype) for k, v in part.items()} for h, part in state.items()}
    write_adapter_file(cast, folder / WEIGHT_NAME)
    copy.deepcopy(encoder).to(dtype).save_pretrained(folder / ENCODER_FOLDER, safe_serialization=True)
    return folder


__all__ = [
    "ALLOWED",
    "ENCODER_FOLDER",
    "WEIGHT_NAME",
    "AdapterSource",
    "AdapterState",
    "adapter_parameters",
    "adapter_state",
    "build_image_encoder",
    "clip_pixels",
    "cross_attention_layers",
    "has_adapter",
    "image_embeddings",
    "initial_adapter_state",
    "install_adapter",
    "ip_processors",
    "load_adapter",
    "read_adapter_file",
    "resolve",
    "save_adapter",
    "write_adapter_file",
]
