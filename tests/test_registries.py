"""The names a job, the wire and the add-on use (shared/settings.py) are the backend's registries' keys, so adding a
representation, method or export format to one table and not the other fails here."""

from __future__ import annotations

import inspect

import numpy as np
import torch

from backend.distill.methods import METHODS as METHOD_TABLE
from backend.export import FORMATS
from backend.export.mesh import Mesh
from backend.export.pipeline import export_mesh
from backend.export.writers import WRITERS
from backend.jobs.finish import export_result
from backend.scene.registry import REPRESENTATIONS as REPRESENTATION_TABLE
from backend.scene.registry import representation_class
from shared.settings import METHODS, REPRESENTATIONS, SCHEMA, settings_for


def test_representations_are_the_registry():
    assert sorted(REPRESENTATION_TABLE) == sorted(REPRESENTATIONS) and len(set(REPRESENTATIONS)) == len(REPRESENTATIONS)
    assert SCHEMA["representation"].choices == REPRESENTATIONS
    for name, cls in REPRESENTATION_TABLE.items():
        assert cls.kind == name  # what checkpoints record and the registry is asked for on resume


def test_an_unknown_representation_names_the_known_ones():
    try:
        representation_class("voxels")
    except ValueError as exc:
        assert "voxels" in str(exc) and "nerf, gaussians" in str(exc)
    else:
        raise AssertionError("no error for an unknown representation")


def test_methods_are_the_method_table():
    # The shared list's order is the panel's (the default first); the table's is the code's.
    assert sorted(METHOD_TABLE) == sorted(METHODS) and len(set(METHODS)) == len(METHODS)
    assert SCHEMA["method"].choices == METHODS
    assert all(spec.name == name for name, spec in METHOD_TABLE.items())


def test_export_formats_are_the_writer_table(tmp_path):
    assert FORMATS == tuple(WRITERS)
    # A job's default export is every format.
    assert tuple(inspect.signature(export_result).parameters["formats"].default) == FORMATS
    # Every writer writes its format from the surface it asks for.
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32) * 0.3
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    figures = export_mesh(tmp_path, Mesh(vertices, faces), lambda p, n: torch.full((len(p), 3), 0.5),
                          texture_size=64)
    for name in FORMATS:
        assert (tmp_path / f"mesh.{name}").stat().st_size > 0, name
        assert figures["files"][name] == str(tmp_path / f"mesh.{name}")


def test_settings_name_only_known_methods_and_representations():
    for setting in SCHEMA.values():
        assert set(setting.methods or ()) <= set(METHODS), setting.name
        assert set(setting.representations or ()) <= set(REPRESENTATIONS), setting.name
    on_gaussians = {s.name for s in settings_for("tbsd", "gaussians")}
    on_nerf = {s.name for s in settings_for("tbsd", "nerf")}
    assert "gaussian_points" in on_gaussians - on_nerf and "nerf_grid_levels" in on_nerf - on_gaussians
    assert {s.name for s in settings_for("tbsd")} == on_gaussians | on_nerf
