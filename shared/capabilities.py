"""The lists ``hello``'s capabilities offer for a job's settings, by key, and where each entry was found (its
``kind``): one vocabulary for the server that writes them (backend/server/app.py) and the add-on that reads them into
its drop-downs (blender_addon/jobs.py, props.py). Each entry is ``{"name", "kind", "label"}``; ``name`` is the
setting's value."""

from __future__ import annotations

MODELS = "models"  # what the `model` setting may name without a download
IP_ADAPTERS = "ip_adapters"  # what the `ip_adapter` setting may name without a download

# An entry's kind.
PROCEDURAL = "procedural"  # the embedded prior
SHIPPED = "shipped"  # in the product's models/ folder, by short name (world-sd, world-sd-ip)
HUB = "hub"  # a hub id in the server's Hugging Face cache
FOLDER = "folder"  # a folder directly inside the server's --models-dir
KINDS = (PROCEDURAL, SHIPPED, HUB, FOLDER)

__all__ = ["FOLDER", "HUB", "IP_ADAPTERS", "KINDS", "MODELS", "PROCEDURAL", "SHIPPED"]
