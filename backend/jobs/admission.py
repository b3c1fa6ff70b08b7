"""Whether a job may be queued: its settings (the shared schema), its model (on this machine) and its prompt (in
its prior's vocabulary), checked before anything runs.

The server checks every submit and refine here and the batch every row, so a job one of them accepts the other
accepts too, and a bad job fails at once with a clear message instead of in a worker minutes later. Only the file
system and a 16 px procedural prior on the CPU are used: no model is loaded, nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from backend.jobs.models import PROCEDURAL, ModelMissing, check_model
from shared.protocol import ProtocolError
from shared.reference_image import REFERENCE_ARRAY, ReferenceImage, check_reference_arrays
from shared.settings import MAX_PROMPT_CHARS, SettingsError, check_new_job, reads_ip_adapter, validate
from shared.texture_mesh import TextureMesh, check_texture_mesh


class Refused(ValueError):
    """A job that may not be queued. ``code`` says which check (``settings``, ``model``, ``prompt``: the wire's
    error codes); the message says what is wrong and what is allowed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Admission:
    """The checks, with the server's (or batch's) defaults: ``default_model`` for jobs that name none (None: the
    schema's), ``models_dir`` where diffusers folders may be besides the Hugging Face cache."""

    def __init__(self, default_model: str | None = None, models_dir: Path | None = None) -> None:
        from backend.priors.procedural.prior import ProceduralPrior

        self.default_model = default_model
        self.models_dir = models_dir
        # Made now, not at the first prompt: importing torch takes seconds the server's loop must not spend.
        self._prior = ProceduralPrior(resolution=16, device="cpu")

    def settings(self, given: Mapping[str, Any] | None, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``given`` validated (over ``base``, a refine's source settings), with the model checked."""
        try:
            settings = validate(dict(given or {}), base=dict(base) if base is not None else None)
            if base is None:  # not a refine: a new job
                check_new_job(settings)
        except SettingsError as exc:
            raise Refused("settings", str(exc)) from None
        if self.default_model is not None and "model" not in (given or {}) and base is None:
            settings["model"] = self.default_model  # the schema's default is procedural; the server's may differ
        try:
            check_model(settings["model"], self.models_dir)
        except ModelMissing as exc:
            raise Refused("model", str(exc)) from None
        if reads_ip_adapter(settings["method"], settings["model"]):
            # Stable Diffusion answers image prompts through an IP-Adapter (backend/priors/ip_adapter.py), which the
            # job must name; the procedural prior has its own.
            from backend.ip_adapter_source import AdapterMissing, check_adapter, needs_adapter

            problem = needs_adapter(settings["method"], settings["model"], settings["ip_adapter"])
            if problem:
                raise Refused("settings", problem)

            try:
                check_adapter(settings["ip_adapter"])
            except AdapterMissing as exc:
                raise Refused("model", str(exc)) from None
        return settings

    def prompt(self, prompt: str, settings: Mapping[str, Any]) -> None:
        """The prompt's length, and for the procedural prior its words: Stable Diffusion reads any text."""
        if not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
            raise Refused("prompt", f"the prompt must be 1-{MAX_PROMPT_CHARS} characters, got {len(prompt)}")
        if settings["model"] != PROCEDURAL:
            return
        from backend.distill.step import prompt_set
        from backend.priors.base import PriorError

        try:
            self._prior.check_prompts(prompt_set(prompt, dict(settings)))
        except PriorError as exc:
            raise Refused("prompt", str(exc)) from None

    def mesh(self, arrays: Mapping[str, Any]) -> TextureMesh:
        """A texture job's mesh (shared/texture_mesh.py: dtypes, shapes, the vertex and face limits, finite values,
        indices in range), or ``Refused`` with code ``bad_field`` naming the array and what is allowed."""
        try:
            return check_texture_mesh(arrays)
        except ProtocolError as exc:
            raise Refused(exc.code, exc.message) from None

    def reference(self, arrays: Mapping[str, Any], given: Mapping[str, Any] | None,
                  settings: dict[str, Any]) -> ReferenceImage | None:
        """A submit's reference image (shared/reference_image.py), checked against the job's method and
        ``reference_source``; a sent image makes ``settings['reference_source']`` 'image'. ``Refused`` (code
        ``bad_field`` for the array, ``settings`` for a setting that contradicts it) naming what is allowed."""
        from backend.distill.methods import METHODS

        try:
            reference = check_reference_arrays(arrays)
        except ProtocolError as exc:
            raise Refused(exc.code, exc.message) from None
        image_prompt = METHODS[settings["method"]].image_prompt
        if reference is None:
            if image_prompt and settings["reference_source"] == "image":
                raise Refused("settings", "reference_source is 'image' but the submit carries no 'reference' array "
                                          "(uint8 [H, W, 3]); send one, or use reference_source 'sample'")
            return None
        if not image_prompt:
            raise Refused("bad_field", f"array '{REFERENCE_ARRAY}' is a reference image for an image-prompt method; "
                                       f"method '{settings['method']}' reads none (use method isd)")
        if (given or {}).get("reference_source", "image") != "image":
            raise Refused("settings", f"the submit carries a reference image but reference_source is "
                                      f"'{(given or {})['reference_source']}'; drop one of them")
        settings["reference_source"] = "image"
        return reference

    def admit(self, prompt: str, given: Mapping[str, Any] | None,
              base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every check; the job's complete settings."""
        settings = self.settings(given, base)
        self.prompt(prompt, settings)
        return settings


__all__ = ["Admission", "Refused"]
