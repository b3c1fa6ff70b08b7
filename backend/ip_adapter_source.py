"""Where an IP-Adapter is, from the ``ip_adapter`` setting, and whether it is on this machine (file system only).

Torch-free, like ``backend/shipped_models.py``, so the server checks a job's adapter before it queues without loading
anything (``backend/jobs/admission.py``); the prior's loader (``backend/priors/ip_adapter.py``) resolves the same way.

An IP-Adapter is a weight file (``ip-adapter.safetensors``) and an ``image_encoder/`` folder beside it. The setting
names it as a shipped short name (``world-sd-ip``), a local folder holding both, a local ``.safetensors`` file with
``image_encoder/`` beside it, or a hub id with an optional path inside the repository
(``h94/IP-Adapter/models/ip-adapter_sd15.safetensors``: h94's SD 1.5 layout has ``models/image_encoder/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backend.shipped_models import SHIPPED_ADAPTERS, resolve_adapter_name
from shared import capabilities as caps
from shared.settings import reads_ip_adapter

WEIGHT_NAME = "ip-adapter.safetensors"
ENCODER_FOLDER = "image_encoder"
ALLOWED = (f"a shipped short name (world-sd-ip), a local folder holding {WEIGHT_NAME} and {ENCODER_FOLDER}/, a local "
           f".safetensors file with {ENCODER_FOLDER}/ beside it, or a hub id with an optional path inside it "
           "(h94/IP-Adapter/models/ip-adapter_sd15.safetensors)")


class AdapterMissing(ValueError):
    """The IP-Adapter a job names cannot be found or is refused; the message says which file and what to do."""


@dataclass(frozen=True)
class AdapterSource:
    """Where an IP-Adapter's two parts are: ``root`` (a local folder or a hub repository), the ``subfolder`` in it
    holding the weight file ``weight_name`` and ``image_encoder/``."""

    spec: str
    root: str
    subfolder: str
    weight_name: str
    local: bool

    @property
    def encoder_subfolder(self) -> str:
        return f"{self.subfolder}/{ENCODER_FOLDER}" if self.subfolder else ENCODER_FOLDER

    def local_files(self, root: Path | None = None) -> tuple[Path, Path]:
        """The weight file and the encoder folder under ``root`` (default: this source's own folder)."""
        base = Path(root if root is not None else self.root, self.subfolder)
        return base / self.weight_name, base / ENCODER_FOLDER


def resolve_adapter(spec: str) -> AdapterSource:
    """Where ``spec`` points; AdapterMissing for a local path that is not there or a pickled weight file."""
    resolved = resolve_adapter_name(spec)
    path = Path(resolved).expanduser()
    if resolved != spec and not path.is_dir():
        raise AdapterMissing(f"IP-Adapter '{spec}' ships with the product in {path}, which is missing: restore it with "
                             f"`git checkout -- models/{path.name}`, or train it with `python -m backend.worldsd.train_ip "
                             f"--out DIR` (on a GPU: bench/world_sd_ip_device.sh) and copy DIR/{path.name} there")
    if path.is_file():
        source = AdapterSource(spec, str(path.parent), "", path.name, True)
    elif path.is_dir():
        source = AdapterSource(spec, str(path), "", WEIGHT_NAME, True)
    elif resolved.startswith((".", "/", "~")) or "\\" in resolved or resolved.count("/") == 0:
        raise AdapterMissing(f"IP-Adapter '{spec}' not found: there is no file or folder {path.resolve()}. "
                             f"ip_adapter may be {ALLOWED}")
    else:
        parts = resolved.split("/")
        rest = parts[2:]
        weight = rest.pop() if rest and rest[-1].endswith((".safetensors", ".bin", ".pt")) else WEIGHT_NAME
        source = AdapterSource(spec, "/".join(parts[:2]), "/".join(rest), weight, False)
    if not source.weight_name.endswith(".safetensors"):
        raise AdapterMissing(f"IP-Adapter '{spec}': the weight file {source.weight_name} is not .safetensors; pickled "
                             "(.bin, .pt) weights are refused, as loading one runs whatever it holds. Convert it once "
                             "with safetensors.torch.save_file on a trusted machine, or use the .safetensors release")
    return source


def needs_adapter(method: str, model: str, ip_adapter: str) -> str | None:
    """Why a job cannot run as set (an image-prompt method on Stable Diffusion without an IP-Adapter), or None.

    Checked before the prior loads (admission, the CLI), so the job fails in milliseconds rather than after loading
    gigabytes; the procedural prior has its own image prompt."""
    if not reads_ip_adapter(method, model) or ip_adapter:
        return None
    return (f"method 'isd' on model '{model}' needs an IP-Adapter for its image prompt: set ip_adapter (world-SD's is "
            "'world-sd-ip'; or a folder with ip-adapter.safetensors and image_encoder/, or a hub id), or use model "
            "'procedural'")


def missing_local_files(source: AdapterSource, root: Path | None = None) -> list[str]:
    """What the adapter's folder lacks: the weight file, the encoder's config.json and model.safetensors."""
    weight, encoder = source.local_files(root)
    wanted = [weight, encoder / "config.json", encoder / "model.safetensors"]
    return [str(p) for p in wanted if not p.is_file()]


def local_adapters(models_dir: Path | None = None) -> list[dict[str, str]]:
    """Every IP-Adapter a job could name by its folder, for ``hello`` (as ``local_models`` lists models): the shipped
    ones whose folder is complete, then the complete adapter folders directly inside ``models_dir``. Each is
    ``{"name", "kind", "label"}``; ``name`` is what ``ip_adapter`` takes. A hub adapter is not listed: where its
    weight file sits inside its repository is the job's to say (h94/IP-Adapter/models/...), not the cache's."""
    found = [{"name": name, "kind": caps.SHIPPED, "label": label} for name, (folder, label) in SHIPPED_ADAPTERS.items()
             if not missing_local_files(AdapterSource(name, str(folder), "", WEIGHT_NAME, True))]
    if models_dir is not None and models_dir.is_dir():
        for folder in sorted(models_dir.iterdir()):
            if folder.is_dir() and not missing_local_files(AdapterSource(folder.name, str(folder), "", WEIGHT_NAME,
                                                                         True)):
                found.append({"name": str(folder.resolve()), "kind": caps.FOLDER, "label": folder.name})
    return found


def check_adapter(spec: str, cache: Path | None = None) -> None:
    """AdapterMissing, naming the missing file and how to get it, unless a job could load ``spec`` without a
    download (a hub adapter must be in the Hugging Face cache: the server never downloads inside a job)."""
    source = resolve_adapter(spec)
    if source.local:
        missing = missing_local_files(source)
        if missing:
            raise AdapterMissing(f"IP-Adapter '{spec}' is incomplete: no {' and no '.join(missing)}. An adapter folder "
                                 f"holds {source.weight_name} (image_proj.* and ip_adapter.* tensors) and "
                                 f"{ENCODER_FOLDER}/ (a CLIPVisionModelWithProjection saved with save_pretrained); "
                                 f"ip_adapter may be {ALLOWED}")
        return
    from backend.jobs.models import hf_cache

    snapshots = (cache or hf_cache()) / ("models--" + source.root.replace("/", "--")) / "snapshots"
    found = snapshots.is_dir() and any(not missing_local_files(source, s) for s in snapshots.iterdir())
    if not found:
        inside = f"{source.subfolder}/" if source.subfolder else ""
        raise AdapterMissing(f"IP-Adapter '{spec}' is not on this machine: {source.root}'s {inside}{source.weight_name} "
                             f"and {inside}{ENCODER_FOLDER}/ are not in the Hugging Face cache ({cache or hf_cache()}). "
                             f"Fetch them once with `hf download {source.root} --include '{inside}{source.weight_name}' "
                             f"'{inside}{ENCODER_FOLDER}/*'` on a machine with internet")


__all__ = [
    "ALLOWED",
    "ENCODER_FOLDER",
    "WEIGHT_NAME",
    "AdapterMissing",
    "AdapterSource",
    "check_adapter",
    "local_adapters",
    "missing_local_files",
    "needs_adapter",
    "resolve_adapter",
]
