"""Quality presets, with their per-representation overrides, under explicit settings."""

import pytest

from shared.settings import SCHEMA, SettingsError, preset_values, validate


def test_gaussians_standard_runs_shorter_than_a_nerf() -> None:
    assert validate({"representation": "nerf"})["steps"] == SCHEMA["steps"].default == 10000
    assert validate({"representation": "gaussians"})["steps"] == 1500
    assert validate({"representation": "gaussians", "quality": "high"})["steps"] == 3000
    assert validate({"representation": "gaussians", "quality": "draft"})["steps"] == 600


def test_explicit_steps_win_over_every_preset() -> None:
    assert validate({"representation": "gaussians", "steps": 123})["steps"] == 123


def test_preset_values_name_what_is_allowed() -> None:
    assert preset_values("standard", "gaussians") == {"steps": 1500}
    with pytest.raises(SettingsError, match="allowed: draft, standard, high"):
        preset_values("ultra", "nerf")
    with pytest.raises(SettingsError, match="representation"):
        validate({"representation": "mesh"})


def test_exported_meshes_are_decimated_by_default() -> None:
    assert validate()["decimate_faces"] == 50000
    assert validate({"quality": "high"})["decimate_faces"] == 200000
