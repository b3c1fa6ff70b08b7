"""Typed views of a job's settings: frozen dataclasses whose field names are setting names, built once when a job
starts, so a setting that is missing or was renamed fails there instead of at the step that first reads it.

``shared/settings.py`` stays the one place that names settings and gives their defaults and ranges: a typed config
has no defaults of its own, and ``tests/test_typed_configs.py`` holds every field to a schema setting of its type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def config_from_settings(cls: type[T], settings: Mapping[str, Any]) -> T:
    """An instance of the dataclass ``cls`` holding the settings of its fields' names (values as they are), or
    KeyError naming every field the settings lack."""
    if not is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    names = [f.name for f in fields(cls)]
    missing = [name for name in names if name not in settings]
    if missing:
        raise KeyError(f"{cls.__name__} needs the settings {', '.join(missing)}, which these settings lack")
    return cls(**{name: settings[name] for name in names})


class SettingsView:
    """Base of a typed config: ``from_settings`` builds it from a job's settings (``config_from_settings``)."""

    @classmethod
    def from_settings(cls: type[T], settings: Mapping[str, Any]) -> T:
        return config_from_settings(cls, settings)


__all__ = ["SettingsView", "config_from_settings"]
