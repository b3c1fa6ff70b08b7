"""Models that ship with the product, by short name (``--model world-sd``).

A short name stands for a diffusers folder inside this repository; everything downstream (the loader, the server's
check and listing, the add-on's drop-down) treats it as that folder, so nothing special-cases a shipped model. Only
the file system is named here (no torch), so the server can import it.
"""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
# short name -> (folder, label for menus)
SHIPPED: dict[str, tuple[Path, str]] = {
    "world-sd": (MODELS_DIR / "world-sd", "world-SD (Stable Diffusion trained on the procedural world)"),
}


# IP-Adapters (the ``ip_adapter`` setting), by short name: an image prompt for a shipped model.
SHIPPED_ADAPTERS: dict[str, tuple[Path, str]] = {
    "world-sd-ip": (MODELS_DIR / "world-sd-ip", "world-SD's IP-Adapter (trained on the procedural world's renders)"),
}


def resolve_adapter_name(adapter: str) -> str:
    """The folder a shipped IP-Adapter's short name stands for; any other name unchanged."""
    return str(SHIPPED_ADAPTERS[adapter][0]) if adapter in SHIPPED_ADAPTERS else adapter


def resolve_model(model: str) -> str:
    """The folder a shipped model's short name stands for; any other name unchanged."""
    return str(SHIPPED[model][0]) if model in SHIPPED else model
