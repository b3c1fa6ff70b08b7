"""The representations a job can train, by the name the ``representation`` setting uses.

Adding one: a module with a ``Representation`` subclass (``from_settings``, and ``from_checkpoint`` when a
checkpoint's shapes are not the settings'), one entry here, and the name (with the representation's own settings)
in ``shared/settings.py``, whose ``REPRESENTATIONS`` a test holds equal to this table's keys.
"""

from __future__ import annotations

from backend.scene.gaussians import GaussianScene
from backend.scene.nerf import NeRFScene
from backend.scene.representation import Representation

REPRESENTATIONS: dict[str, type[Representation]] = {
    "nerf": NeRFScene,
    "gaussians": GaussianScene,
}


def representation_class(name: str) -> type[Representation]:
    """The class of representation ``name``, or ValueError naming the known ones."""
    try:
        return REPRESENTATIONS[name]
    except KeyError:
        raise ValueError(f"unknown representation '{name}'; allowed: {', '.join(REPRESENTATIONS)}") from None


def checkpoint_class(name: str) -> type[Representation]:
    """The class a checkpoint's ``representation`` names: one of ``REPRESENTATIONS`` or a textured mesh (a texture
    job's, which the ``representation`` setting does not offer: it is built from a mesh, and its checkpoint holds
    that mesh)."""
    if name == "textured_mesh":
        # Imported here: it pulls in the export's mesh module, which a generated job's start does not need.
        from backend.scene.textured_mesh import TexturedMesh

        return TexturedMesh
    return representation_class(name)


__all__ = ["REPRESENTATIONS", "checkpoint_class", "representation_class"]
