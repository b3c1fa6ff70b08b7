"""Typed configs are views of the one schema: their fields are settings of the same name and type, and a setting
they need that is missing fails when the job starts, not at the step that first reads it."""

from __future__ import annotations

import typing
from dataclasses import fields

import pytest

from backend.config import config_from_settings
from backend.distill.methods import EDIT, METHODS
from backend.distill.step import DistillConfig
from backend.distill.timesteps import TimestepConfig
from backend.priors.procedural.prior import ProceduralPrior
from backend.scene.cameras import CameraConfig
from backend.train import Trainer
from shared.settings import SCHEMA, validate

TYPED_CONFIGS = (CameraConfig, TimestepConfig, EDIT.params, *(spec.params for spec in METHODS.values()))


@pytest.mark.parametrize("cls", TYPED_CONFIGS)
def test_every_field_is_a_schema_setting_of_its_type(cls):
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        assert f.name in SCHEMA, f"{cls.__name__}.{f.name} is not a setting"
        assert SCHEMA[f.name].kind is hints[f.name], f.name


def test_a_config_takes_the_settings_values_and_names_what_is_missing():
    settings = validate({"camera_fovy_min": 20.0, "camera_fovy_max": 30.0})
    cameras = CameraConfig.from_settings(settings)
    assert (cameras.camera_fovy_min, cameras.camera_fovy_max) == (20.0, 30.0)
    del settings["camera_fovy_max"], settings["light_azimuth_spread"]
    with pytest.raises(KeyError, match="camera_fovy_max, light_azimuth_spread"):
        config_from_settings(CameraConfig, settings)


def test_a_job_missing_a_camera_setting_fails_when_it_starts():
    settings = validate({"quality": "draft", "representation": "gaussians", "gaussian_points": 100, "steps": 2})
    del settings["camera_elevation_max"]  # e.g. a settings dict from before a rename
    with pytest.raises(KeyError, match="camera_elevation_max"):
        Trainer(ProceduralPrior(resolution=32), "a red cube", settings)


@pytest.mark.parametrize("method", list(METHODS))
def test_a_methods_parameters_are_the_method_settings_tagged_for_it(method):
    fields_ = {f.name for f in fields(METHODS[method].params)}
    tagged = {name for name, setting in SCHEMA.items()
              if setting.group == "method" and setting.methods is not None and method in setting.methods}
    assert fields_ == tagged


def test_the_edit_parameters_are_the_edit_settings_it_weighs_with():
    fields_ = {f.name for f in fields(EDIT.params)}
    assert fields_ == {name for name, s in SCHEMA.items() if s.group == "edit" and s.kind is float}


def test_a_job_missing_a_method_setting_fails_when_it_starts():
    settings = validate({"quality": "draft", "representation": "gaussians", "gaussian_points": 100, "steps": 2,
                         "method": "csd"})
    assert DistillConfig.from_settings(settings).params.csd_w2 == settings["csd_w2"]
    del settings["csd_anneal_until"]
    with pytest.raises(KeyError, match="csd_anneal_until"):
        Trainer(ProceduralPrior(resolution=32), "a red cube", settings)
