"""Which schema settings the panel shows, and where: a pure function of the shared schema (no bpy).

The panel draws exactly what `sections` returns, so a setting added to shared/settings.py shows up in the
N-panel without an edit here, for the methods and representations it applies to (a Gaussians job shows no NeRF
knobs); tests/blender/addon_lifecycle.py checks every setting is drawn for some method and representation or is in
`HIDDEN` with a reason.
"""

from __future__ import annotations

from ._vendor.shared.settings import SCHEMA, Setting, reads_ip_adapter, settings_for

# Deliberately not in the panel, with the reason. The image_* settings drive the 2D image experiment
# (`python -m backend image`), which is a research tool, not a 3D job the add-on can start.
HIDDEN: dict[str, str] = {
    name: "2D image experiment only; the add-on runs 3D jobs"
    for name, s in SCHEMA.items() if s.group == "image"
}
# A texture job's own settings: "Texture selected" runs them at their defaults (the object's mesh as it lies).
HIDDEN.update({name: "texture jobs' own settings; Texture selected runs them at their defaults"
               for name, s in SCHEMA.items() if s.group == "texture"})
# Follows the image-prompt box: a picked image is sent with the submit (the server then sets 'image'); none leaves the
# default, a reference drawn from the prior. A separate switch could only contradict the picker.
HIDDEN["reference_source"] = "follows the reference image picker: picked -> image, none -> sample"

# Drawn at the top, always, in this order (the prompt itself is not a schema setting).
BASIC: tuple[str, ...] = ("model", "method", "representation", "quality", "seed")
# The descriptors the method turns into a negative prompt: under the prompt, for the methods that use them.
PROMPT_GROUP = "prompt"
# An edit is a Refine's (shared/settings.py check_new_job): drawn beside the Refine button, not among Generate's.
EDIT_GROUP = "edit"
# Drawn in the image-prompt box with a drop-down of the backend's IP-Adapters, and only where the job reads it.
ADAPTER = "ip_adapter"


def _visible(method: str, representation: str | None = None) -> list[Setting]:
    return [s for s in settings_for(method, representation) if s.name not in HIDDEN]


def prompt_settings(method: str) -> list[str]:
    """Negative prompt / target-negative descriptors the chosen method uses."""
    return [s.name for s in _visible(method) if s.group == PROMPT_GROUP]


def adapter_settings(method: str, model: str) -> list[str]:
    """What the image-prompt box shows besides the reference image: ``ip_adapter`` for isd on Stable Diffusion."""
    return [ADAPTER] if reads_ip_adapter(method, model) and ADAPTER not in HIDDEN else []


def edit_settings(advanced: bool) -> list[str]:
    """What Refine's edit box shows: the attribute to remove, and its weights when ``advanced``."""
    return [s.name for s in SCHEMA.values()
            if s.group == EDIT_GROUP and s.name not in HIDDEN and (advanced or not s.advanced)]


def sections(method: str, representation: str) -> list[tuple[str, list[str]]]:
    """(title, setting names) below the basic fields: the non-advanced "Settings", then advanced groups, each with
    the settings ``method`` on ``representation`` uses.

    Advanced sections are titled "Advanced: <group>" and sit in the panel's collapsible advanced box.
    """
    rest = [s for s in _visible(method, representation)
            if s.name not in BASIC and s.name != ADAPTER and s.group not in (PROMPT_GROUP, EDIT_GROUP)]
    out: list[tuple[str, list[str]]] = [("Settings", [s.name for s in rest if not s.advanced])]
    by_group: dict[str, list[str]] = {}
    for s in rest:
        if s.advanced:
            by_group.setdefault(s.group, []).append(s.name)
    out.extend((f"Advanced: {group}", names) for group, names in by_group.items())
    return [(title, names) for title, names in out if names]


def drawn_names(method: str, representation: str) -> set[str]:
    """Every setting the panel draws for ``method`` on ``representation``."""
    names = set(BASIC) | set(prompt_settings(method)) | set(edit_settings(advanced=True))
    names.update(adapter_settings(method, "a Stable Diffusion model"))  # any model but the procedural prior
    for _, group in sections(method, representation):
        names.update(group)
    return names
