"""The diffusion priors a job can name: which are on this machine, whether a named one is, and the one kept loaded.

A job's ``model`` setting (shared/settings.py) is ``procedural``, a local diffusers folder or a hub id. The server
checks the model is here *before* the job queues: a missing one would otherwise fail only when the job starts,
or start a download of gigabytes inside a job. ``hello`` lists what is here (the Hugging Face cache and the
server's models folder) so the add-on can offer it in a drop-down. The worker keeps the last prior loaded and
loads another only when a job asks for it (``PriorCache``).

Only the file system is read here (no torch, no network), so listing and checking cost milliseconds.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

from backend.shipped_models import SHIPPED
from shared import capabilities as caps
from shared.settings import PROCEDURAL_MODEL

PROCEDURAL = PROCEDURAL_MODEL
# A Stable Diffusion diffusers folder, as the product's loader (backend/priors/stable_diffusion.py) reads it.
SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
EXAMPLE_HUB_ID = "stabilityai/stable-diffusion-2-1-base"


class ModelMissing(Exception):
    """The model a job names is not on this machine; the message says which and how to fetch it."""


def hf_cache() -> Path:
    """The Hugging Face hub cache (HF_HUB_CACHE, HF_HOME/hub, or ~/.cache/huggingface/hub), as diffusers uses it."""
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except ImportError:  # the add-on never imports this module; the backend always has huggingface_hub
        home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
        return Path(os.environ.get("HF_HUB_CACHE") or home / "hub")


def is_pipeline_folder(path: Path) -> bool:
    return path.is_dir() and all((path / part).is_dir() for part in SD_PARTS)


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "\\", ".", "~")) or "\\" in model or bool(re.match(r"[A-Za-z]:", model)) \
        or model.count("/") > 1


def cached_snapshot(hub_id: str, cache: Path | None = None) -> Path | None:
    """The snapshot folder of ``hub_id`` in the HF cache holding a whole pipeline (``refs/main`` first), or None."""
    repo = (cache or hf_cache()) / ("models--" + hub_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    preferred = [snapshots / ref.read_text().strip()] if ref.is_file() else []
    for snapshot in preferred + sorted(snapshots.iterdir()):
        if is_pipeline_folder(snapshot):
            return snapshot
    return None


def local_models(models_dir: Path | None = None, cache: Path | None = None) -> list[dict[str, str]]:
    """Every model a job could name without a download: ``procedural``, the hub ids in the HF cache, and the
    diffusers folders directly inside ``models_dir``. Each is ``{"name", "kind", "label"}``; ``name`` is what
    a job's ``model`` setting takes."""
    found = [{"name": PROCEDURAL, "kind": caps.PROCEDURAL, "label": "Procedural (embedded, exact scores)"}]
    found += [{"name": name, "kind": caps.SHIPPED, "label": label} for name, (folder, label) in SHIPPED.items()
              if is_pipeline_folder(folder)]
    cache = cache or hf_cache()
    if cache.is_dir():
        for repo in sorted(cache.glob("models--*")):
            hub_id = repo.name[len("models--"):].replace("--", "/", 1)
            if cached_snapshot(hub_id, cache) is not None:
                found.append({"name": hub_id, "kind": caps.HUB, "label": hub_id})
    if models_dir is not None and models_dir.is_dir():
        for folder in sorted(models_dir.iterdir()):
            if is_pipeline_folder(folder):
                found.append({"name": str(folder.resolve()), "kind": caps.FOLDER, "label": folder.name})
    return found


def check_model(model: str, models_dir: Path | None = None, cache: Path | None = None) -> None:
    """Raise ModelMissing, naming ``model`` and how to fetch it, unless a job could load it without a download."""
    if model == PROCEDURAL:
        return
    if model in SHIPPED:
        folder = SHIPPED[model][0]
        if is_pipeline_folder(folder):
            return
        raise ModelMissing(
            f"model '{model}' ships with the product but its folder {folder} is missing or incomplete (it needs "
            f"{', '.join(SD_PARTS)}); restore it with `git checkout -- {folder.relative_to(folder.parents[1])}` "
            f"in the repository{_choices(models_dir, cache)}")
    path = Path(model).expanduser()
    if path.is_dir() or _looks_like_path(model):
        if is_pipeline_folder(path):
            return
        missing = [p for p in SD_PARTS if not (path / p).is_dir()]
        what = "does not exist" if not path.is_dir() else f"is not a diffusers folder (no {', '.join(missing)})"
        raise ModelMissing(
            f"model '{model}' is not on this machine: the folder {path.resolve()} {what}. Fetch a Stable Diffusion "
            f"1.x/2.x model into it with `hf download {EXAMPLE_HUB_ID} --local-dir {path}` (in the backend's "
            f"environment, on a machine with internet), or choose another model{_choices(models_dir, cache)}")
    if not _HUB_ID.fullmatch(model):
        raise ModelMissing(
            f"model '{model}' is neither 'procedural', a shipped model ({', '.join(SHIPPED)}), a diffusers folder nor a hub id (owner/name, e.g. "
            f"{EXAMPLE_HUB_ID}){_choices(models_dir, cache)}")
    if cached_snapshot(model, cache) is None:
        raise ModelMissing(
            f"model '{model}' is not on this machine: it is not in the Hugging Face cache ({cache or hf_cache()}). "
            f"Fetch it once with `hf download {model}` (in the backend's environment, on a machine with "
            f"internet; the backend never downloads inside a job), or choose another model"
            f"{_choices(models_dir, cache)}")


def _choices(models_dir: Path | None, cache: Path | None) -> str:
    names = [m["name"] for m in local_models(models_dir, cache)]
    return "; on this machine: " + ", ".join(names)


class PriorCache:
    """The worker's loaded prior: the last model a job used, kept until a job names another.

    A Stable Diffusion prior holds gigabytes of (GPU) memory, so switching drops everything loaded before the
    next model loads. Procedural priors of several resolutions may stay side by side: each is small.
    """

    def __init__(self, load: Callable[[str, Any, int, str], Any], device: Any) -> None:
        self._load = load
        self.device = device
        self._priors: dict[tuple[str, int, str], Any] = {}

    def get(self, model: str, procedural_resolution: int, ip_adapter: str = "") -> tuple[Any, bool]:
        """The prior for a job; ``True`` second when this call loaded it (False: kept from an earlier job). A model
        with another IP-Adapter (or none) is another prior: the adapter changes the UNet's attention."""
        procedural = model == PROCEDURAL
        key = (model, procedural_resolution if procedural else 0, "" if procedural else ip_adapter)
        if key in self._priors:
            return self._priors[key], False
        if model != PROCEDURAL or any(m != PROCEDURAL for m, _, _ in self._priors):
            self._priors.clear()
            _free_device_memory(self.device)
        self._priors[key] = self._load(model, self.device, procedural_resolution, key[2])
        return self._priors[key], True

    def loaded(self) -> list[str]:
        return sorted({model for model, _, _ in self._priors})


def _free_device_memory(device: Any) -> None:
    # Return the dropped model's blocks to the driver before the next one allocates.
    if getattr(device, "type", str(device)) == "cuda":
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()


__all__ = ["ModelMissing", "PriorCache", "check_model", "hf_cache", "local_models", "PROCEDURAL"]
