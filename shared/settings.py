"""The one settings schema: names, types, defaults, ranges and help text.

The backend CLI builds its flags from it, the wire protocol validates job settings
against it and the Blender panel draws its fields from it, so a setting is added
here once and appears everywhere. Nothing in this module imports torch or bpy.

Run-length-dependent knobs (CSD's anneal, Bridge's stage switch, TBSD's beta, the
timestep anneal) are given as *fractions of the run* rather than step counts, so
an artist who changes ``steps`` keeps the same schedule shape. The public configs'
step numbers are noted next to each default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

METHODS: tuple[str, ...] = ("tbsd", "sds", "nfsd", "csd", "bridge", "bsd", "isd")
REPRESENTATIONS: tuple[str, ...] = ("nerf", "gaussians")
WEIGHTINGS: tuple[str, ...] = ("auto", "sds", "uniform", "sqrt_abar", "abar")
T_SCHEDULES: tuple[str, ...] = ("random", "random_step_anneal", "random_linear_anneal", "deterministic")
NERF_BACKGROUNDS: tuple[str, ...] = ("learned", "grey")

# Negative texts from the public code (../shared/REFERENCE.md); kept verbatim.
NFSD_NEGATIVE = (
    "unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, low-resolution, gloomy"
)
CSD_NEGATIVE = "oversaturated color, ugly, tiling, low quality, noisy"
BSD_NEGATIVE = "unrealistic, blurry, low quality"
TARGET_NEGATIVE_DESCRIPTORS = (
    "oversaturated, smooth, pixelated, cartoon, foggy, hazy, blurry, bad structure, noisy, malformed"
)
DEFAULT_NEGATIVE_BY_METHOD: dict[str, str] = {
    "nfsd": NFSD_NEGATIVE,
    "csd": CSD_NEGATIVE,
    "bsd": BSD_NEGATIVE,
}
# w(t) per method when ``weighting`` is "auto" (REFERENCE.md: public code's choices).
DEFAULT_WEIGHTING_BY_METHOD: dict[str, str] = {
    "sds": "sds",
    "nfsd": "sds",
    "csd": "uniform",
    "bridge": "sds",
    "bsd": "sqrt_abar",
    "tbsd": "sds",
    "isd": "sds",  # ModeDreamer trains in threestudio, whose default w(t) is SDS's
}
# Where an image-prompt method's reference comes from: a sample of the prior for the prompt (ModeDreamer's default),
# or the image the job was given (--image PATH, the submit's 'reference' array).
REFERENCE_SOURCES: tuple[str, ...] = ("sample", "image")
# w(t) of CSD's edit (a refine with an edit prompt) when ``weighting`` is "auto": CSD's own.
EDIT_WEIGHTING = "uniform"

MAX_PROMPT_CHARS = 500
PROCEDURAL_MODEL = "procedural"  # the embedded prior: the default model, and the one that needs no IP-Adapter


class SettingsError(ValueError):
    """A setting has an unknown name, a wrong type or an out-of-range value."""


@dataclass(frozen=True)
class Setting:
    name: str
    kind: type  # float, int, str or bool
    default: Any
    help: str
    group: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None  # None: used by every method
    representations: tuple[str, ...] | None = None  # None: used by every representation
    advanced: bool = False
    max_length: int = MAX_PROMPT_CHARS

    def check(self, value: Any) -> Any:
        """Return ``value`` coerced to this setting's type, or raise SettingsError."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise SettingsError(f"setting '{self.name}' must be true or false, got {value!r}")
            return value
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise SettingsError(f"setting '{self.name}' must be an integer, got {value!r}")
        elif self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SettingsError(f"setting '{self.name}' must be a number, got {value!r}")
            try:
                value = float(value)
            except OverflowError:  # an integer beyond any float, e.g. 10**400
                raise SettingsError(f"setting '{self.name}' is out of range; allowed range {self.range_text()}") from None
            if not math.isfinite(value):
                raise SettingsError(f"setting '{self.name}' must be finite, got {value!r}")
        elif self.kind is str:
            if not isinstance(value, str):
                raise SettingsError(f"setting '{self.name}' must be a string, got {value!r}")
            if len(value) > self.max_length:
                raise SettingsError(
                    f"setting '{self.name}' is {len(value)} characters long; at most {self.max_length} are allowed"
                )
        if self.choices is not None and value not in self.choices:
            raise SettingsError(
                f"setting '{self.name}' is {value!r}; allowed: {', '.join(self.choices)}"
            )
        if self.minimum is not None and value < self.minimum:
            raise SettingsError(f"setting '{self.name}' is {value}; allowed range {self.range_text()}")
        if self.maximum is not None and value > self.maximum:
            raise SettingsError(f"setting '{self.name}' is {value}; allowed range {self.range_text()}")
        return value

    def range_text(self) -> str:
        return f"[{self.minimum}, {self.maximum}]"


def _s(*args: Any, **kwargs: Any) -> Setting:
    return Setting(*args, **kwargs)


_ALL: tuple[Setting, ...] = (
    # --- what to make -------------------------------------------------------------------------
    _s("method", str, "tbsd", "Score-distillation method.", "job", choices=METHODS),
    _s("model", str, PROCEDURAL_MODEL,
       "Diffusion prior: 'procedural' (embedded exact-score world), 'world-sd' (a Stable Diffusion trained "
       "on that world, shipped in models/) or a Stable Diffusion 1.x/2.x folder or hub id.", "job", max_length=1000),
    _s("representation", str, "nerf", "3D representation to optimise.", "job", choices=REPRESENTATIONS),
    _s("seed", int, 0, "Random seed; the same seed and settings repeat a run.", "job", 0, 2**31 - 1),
    _s("steps", int, 10000, "Optimisation steps of a 3D run.", "job", 1, 200000),
    _s("negative_prompt", str, "",
       "General negative prompt (no target words). Empty: the method's published default "
       "(NFSD, CSD and BSD each have one).", "prompt", methods=("nfsd", "csd", "bsd")),
    _s("target_negative_descriptors", str, TARGET_NEGATIVE_DESCRIPTORS,
       "Descriptors appended to the prompt to form the target negative prompt "
       "(y_tnp = prompt + ', ' + descriptors).", "prompt", methods=("bridge", "tbsd")),
    # --- timesteps ----------------------------------------------------------------------------
    _s("t_min", float, 0.02, "Smallest diffusion time, as a fraction of the scheduler's steps.",
       "timesteps", 0.0, 1.0, advanced=True),
    _s("t_max", float, 0.98, "Largest diffusion time at the start of a run.", "timesteps", 0.0, 1.0,
       advanced=True),
    _s("t_schedule", str, "random_step_anneal",
       "How t is drawn: 'random' U[t_min, t_max]; 'random_step_anneal' drops t_max to t_max_late at "
       "t_anneal_at (ProlificDreamer/CSD/Bridge: 0.98 -> 0.5 at step 5000); 'random_linear_anneal' "
       "lowers it linearly until t_anneal_at (PlacidDreamer); 'deterministic' t = (1 - progress) "
       "(DreamGaussian).", "timesteps", choices=T_SCHEDULES, advanced=True),
    _s("t_max_late", float, 0.5, "t_max after the anneal.", "timesteps", 0.0, 1.0, advanced=True),
    _s("t_anneal_at", float, 0.5, "Fraction of the run at which the t_max anneal completes.",
       "timesteps", 0.0, 1.0, advanced=True),
    _s("weighting", str, "auto",
       "w(t): 'sds' 1 - abar_t, 'uniform' 1, 'sqrt_abar', 'abar'; 'auto' takes the method's "
       "public default (SDS/NFSD/Bridge/TBSD sds, CSD uniform, BSD sqrt_abar).",
       "timesteps", choices=WEIGHTINGS, advanced=True),
    # --- per-method scales ----------------------------------------------------------------------
    _s("sds_guidance_scale", float, 100.0,
       "SDS classifier-free guidance s in e_null + s (e_tgt - e_null) (threestudio's 100 is s = 101 "
       "in this convention; DreamFusion used 100).", "method", 0.0, 500.0, methods=("sds", "bridge")),
    _s("nfsd_guidance_scale", float, 7.5, "NFSD guidance scale on (e_tgt - e_null).", "method", 0.0, 100.0,
       methods=("nfsd",)),
    _s("nfsd_small_t", int, 200, "Below this timestep NFSD's d_D is e_null alone.", "method", 0, 1000,
       methods=("nfsd",), advanced=True),
    _s("csd_w1", float, 1.0, "CSD weight on the classifier term (e_tgt - e_null).", "method", 0.0, 100.0,
       methods=("csd",)),
    _s("csd_w2", float, 1.0, "CSD final weight on the negative term (e_null - e_neg).", "method", 0.0, 100.0,
       methods=("csd",)),
    _s("csd_anneal_until", float, 0.5,
       "Fraction of the run over which CSD's negative weight rises from 0 to csd_w2 (official 3D "
       "config: 5000 steps).", "method", 0.0, 1.0, methods=("csd",), advanced=True),
    _s("csd_normalize", bool, False, "Divide CSD's direction by its norm per sample.", "method",
       methods=("csd",), advanced=True),
    _s("bridge_switch_at", float, 0.8,
       "Fraction of the run at which Bridge moves from SDS (stage 1) to k (e_tgt - e_src) "
       "(3D: 20k of 25k steps; 2D: 500 of 1000).", "method", 0.0, 1.0, methods=("bridge",)),
    _s("bridge_k", float, 1.0, "Bridge stage-2 scale k.", "method", 0.0, 100.0, methods=("bridge",)),
    _s("bsd_lambda", float, 15.0,
       "BSD's classifier weight lambda (paper 25; the released code hard-codes 15).", "method",
       0.0, 200.0, methods=("bsd",)),
    _s("bsd_use_negative", bool, True,
       "BSD's unconditional branch: the negative prompt (released code) instead of the empty prompt "
       "(paper).", "method", methods=("bsd",), advanced=True),
    _s("tbsd_alpha", float, 2.0,
       "TBSD factor(step) start value alpha (unpublished; see docs/METHODS.md).", "method",
       0.0, 100.0, methods=("tbsd",)),
    _s("tbsd_beta", float, 0.5,
       "Fraction of the run over which factor falls from alpha to gamma (alpha / beta is the rate).",
       "method", 1e-6, 10.0, methods=("tbsd",)),
    _s("tbsd_gamma", float, 0.5, "Lower bound gamma of TBSD's factor(step).", "method", 0.0, 100.0,
       methods=("tbsd",)),
    _s("tbsd_scale", float, 1.0,
       "Overall scale of TBSD's direction (with Adam it only matters relative to other losses).",
       "method", 0.0, 1000.0, methods=("tbsd",), advanced=True),
    _s("tbsd_anchor", float, 1.0,
       "Weight of a denoising anchor (e_tgt - eps) added to TBSD's direction; 0 is the paper's TBSD. Not in the "
       "paper: both TBSD terms vanish once the prior names the target, so without it a run stops on the decision "
       "boundary (docs/METHODS.md).", "method", 0.0, 100.0, methods=("tbsd",), advanced=True),
    _s("isd_guidance_scale", float, 7.5,
       "ISD's classifier-free guidance scale, the same on the image-prompt (IP) prior and the plain prior "
       "(ModeDreamer: 7.5).", "method", 0.0, 100.0, methods=("isd",)),
    # 0.5, not the paper's 0: eq. 7 is a difference of two priors' predictions, zero wherever the prompt's objects
    # agree, so in the procedural world it never denoises the background nor shapes the object (draft Gaussians,
    # "a cube" with a blue cube: voxel IoU 0.57 at 0 (a blue blob), 0.79 at 0.1, 0.84 at 0.2, 0.87 at 0.5, 0.88 at 1).
    _s("isd_noise_weight", float, 0.5,
       "Weight a of the injected noise in ISD's control variate, g = e_IP - ((1 - a) e_SD + a eps): 0 is the "
       "paper's ISD (eq. 7), 1 its IP-SDS (eq. 4). Not in the paper as a blend: at 0 a run never forms the shape in "
       "the procedural world (docs/METHODS.md, session 14).", "method", 0.0, 1.0, methods=("isd",), advanced=True),
    # --- image prompt (ISD's reference image) ------------------------------------------------------
    _s("reference_source", str, "sample",
       "ISD's reference image: 'sample' draws one from the prior for the prompt (ModeDreamer's default; the "
       "procedural prior: one object of the prompt's mixture, by the seed; Stable Diffusion: its DDIM sample, 50 steps at CFG 7.5), 'image' uses the image the job was "
       "given (--image PATH, or the submit's reference array). Giving an image selects 'image'.",
       "image_prompt", choices=REFERENCE_SOURCES, methods=("isd",)),
    _s("ip_adapter", str, "",
       "Stable Diffusion models: the IP-Adapter that gives the prior its image prompt (ISD needs one): 'world-sd-ip' "
       "(shipped with world-SD), a folder holding ip-adapter.safetensors and image_encoder/, a .safetensors file with "
       "image_encoder/ beside it, or a hub id with a path inside it (h94/IP-Adapter/models/ip-adapter_sd15."
       "safetensors). Empty: none. The procedural prior has its own image prompt and ignores it.",
       "image_prompt", methods=("isd",), max_length=1000),
    _s("ip_scale", float, 0.5,
       "How strongly the reference conditions the image-prompt branches: the IP-Adapter scale (ModeDreamer: 0.5; "
       "its study: 0, 0.2, 0.5, 0.7, 1.0). On the procedural prior the exponent of the reference's likelihood: 0 is "
       "the text prior, 1 the full image posterior.", "image_prompt", 0.0, 2.0, methods=("isd",)),
    _s("ip_temperature", float, 0.001,
       "Procedural prior: how far (mean squared pixel difference, image units) a component's render may be from "
       "the reference before its weight falls by e^-ip_scale; smaller picks the nearest object more sharply.",
       "image_prompt", 1e-6, 1.0, methods=("isd",), advanced=True),
    # --- editing by text (a refine only) ---------------------------------------------------------------
    _s("edit_prompt", str, "",
       "Refine only: the attribute to remove (CSD's y_edit, e.g. 'red'), while the refine's prompt names the "
       "object wanted ('a green cube'); the refine then runs CSD's edit direction (eq. 11) instead of the job's "
       "method. Empty: a plain refine. It belongs to the refine that names it (refining an edited asset again "
       "does not repeat the edit) and is refused on a new job.", "edit"),
    _s("edit_w1", float, 1.0, "Edit weight w1 on the wanted object's classifier score (CSD paper: 1).", "edit",
       0.0, 100.0, advanced=True),
    _s("edit_w2", float, 0.5,
       "Edit weight w2 on the removed attribute's classifier score (CSD paper: 0.5; larger moves further from it, "
       "smaller keeps more of the original).", "edit", 0.0, 100.0, advanced=True),
    _s("edit_anchor", float, 1.0,
       "Weight of a denoising anchor (e_tgt - eps) added to the edit's direction; 0 is the paper's eq. 11. Not in "
       "the paper: eq. 11's terms have no fixed point at the target, and without it a red cube edited green over "
       "600 draft steps came out mottled and hollow (voxel IoU 0.31; 0.87 with it; docs/METHODS.md, session 14).",
       "edit", 0.0, 100.0, advanced=True),
    # --- 3D run: cameras ----------------------------------------------------------------------------
    _s("quality", str, "standard",
       "Preset that sets resolution, samples and step counts together (see PRESETS); explicit settings win.",
       "job", choices=("draft", "standard", "high")),
    _s("views_per_step", int, 1, "Camera views rendered per step.", "camera", 1, 16, advanced=True),
    _s("camera_distance_min", float, 1.6, "Nearest training camera distance (object fits the unit box).",
       "camera", 0.8, 10.0, advanced=True),
    _s("camera_distance_max", float, 2.2, "Farthest training camera distance.", "camera", 0.8, 10.0, advanced=True),
    # -30..60, not -10..45: from -10 a bottom is seen at 10 deg at most, and mostly under ambient light alone, so its
    # colour went unlearnt (GPU suite: cube and cone bases 11-33% of the surface in the wrong colour); 60 keeps the
    # high views that see through a torus's hole (docs/METHODS.md, "Session 7").
    _s("camera_elevation_min", float, -30.0, "Lowest training camera elevation, degrees.", "camera", -89.0, 89.0,
       advanced=True),
    _s("camera_elevation_max", float, 60.0, "Highest training camera elevation, degrees.", "camera", -89.0, 89.0,
       advanced=True),
    # A light from any side (180, -90..90), not one near the camera (60, 0..45): under a near head-light every visible
    # surface faces the light, so shading says little about shape, and a bumpy surface shades darker than a flat one
    # (n.l is largest at the light), which the albedo made up by brightening 10-20% (draft NeRF colour error
    # 0.12-0.16 -> 0.01-0.08; draft pink torus IoU 0.55-0.76 -> 0.84-0.90; docs/METHODS.md, "Session 8").
    _s("light_azimuth_spread", float, 180.0,
       "Each training view's light lies within this many degrees of azimuth of its camera.", "camera", 0.0, 180.0,
       advanced=True),
    _s("light_elevation_offset_min", float, -90.0,
       "Lowest elevation of each training view's light relative to its camera, degrees (clamped to -89 absolute).",
       "camera", -90.0, 90.0, advanced=True),
    _s("light_elevation_offset_max", float, 90.0,
       "Highest elevation of each training view's light relative to its camera, degrees (clamped to 89 absolute).",
       "camera", -90.0, 90.0, advanced=True),
    _s("camera_fovy_min", float, 35.0, "Smallest vertical field of view, degrees.", "camera", 5.0, 120.0,
       advanced=True),
    _s("camera_fovy_max", float, 50.0, "Largest vertical field of view, degrees.", "camera", 5.0, 120.0,
       advanced=True),
    _s("camera_bank_size", int, -1,
       "Training cameras drawn once and reused (-1: 96 for camera-aware priors, whose renders are then "
       "cached; fresh cameras every step otherwise; 0: always fresh).", "camera", -1, 100000, advanced=True),
    _s("view_prompts", bool, True,
       "Append ', front view' / ', side view' / ', back view' / ', overhead view' to Stable Diffusion prompts.",
       "camera", advanced=True),
    _s("textureless_prob", float, 0.0,
       "Probability of a textureless (white albedo) render per step for priors that do not fix the shading "
       "(Stable Diffusion; DreamFusion: 0.5). 0 by default: on world-SD a white render under a colour prompt "
       "lowered the voxel IoU in 36 of 41 paired runs (docs/METHODS.md, session 13).",
       "camera", 0.0, 1.0, advanced=True),
    # --- 3D run: optimisation -----------------------------------------------------------------------
    _s("lr", float, 0.01, "AdamW learning rate of the 3D representation (TBSD paper: 0.01).", "optimise",
       1e-5, 1.0, advanced=True),
    _s("render_res_start", int, 64, "Render resolution at the start of a run (TBSD: 64).", "optimise", 16, 1024,
       advanced=True),
    _s("render_res_end", int, 256, "Render resolution after render_res_switch_at (TBSD: 256).", "optimise",
       16, 1024, advanced=True),
    _s("render_res_switch_at", float, 0.5, "Fraction of the run at which the resolution rises.", "optimise",
       0.0, 1.0, advanced=True),
    _s("lambda_orientation_start", float, 10.0, "NeRF orientation-loss weight at the start (threestudio: 10).",
       "optimise", 0.0, 1e5, representations=("nerf",), advanced=True),
    _s("lambda_orientation_end", float, 1000.0,
       "Orientation-loss weight reached at half the run (threestudio: 1000 at step 5000).", "optimise",
       0.0, 1e5, representations=("nerf",), advanced=True),
    _s("lambda_sparsity", float, 1.0,
       "Weight of the NeRF's sparsity loss sqrt(opacity^2 + 0.01) (the Gaussians have none).", "optimise",
       0.0, 1e4, representations=("nerf",), advanced=True),
    _s("lambda_translucency", float, 0.0,
       "Weight of the Gaussians' translucency loss, 4 a (1 - a) of the rendered alpha summed over a view: a "
       "see-through white over the grey background looks like a shaded white face (docs/METHODS.md, session 10).",
       "optimise",
       0.0, 1e4, representations=("gaussians",), advanced=True),
    _s("translucency_start", float, 0.0,
       "Fraction of the run before which the translucency loss is off (0: on from the start). Measured at 0.6, "
       "where densification stops: it did not lift the draft white cube and swelled the red cube and pink torus, "
       "since the term moves every soft silhouette edge outward (docs/METHODS.md, session 15).",
       "optimise", 0.0, 1.0, representations=("gaussians",), advanced=True),
    _s("nerf_samples_per_ray", int, 128, "NeRF samples per ray before empty-space skipping.", "nerf", 8, 1024,
       representations=("nerf",), advanced=True),
    _s("nerf_grid_levels", int, 16, "Hash-grid levels (threestudio: 16).", "nerf", 1, 32, representations=("nerf",),
       advanced=True),
    _s("nerf_grid_log2_table", int, 19, "log2 of the hash table size per level (threestudio: 19).", "nerf",
       8, 24, representations=("nerf",), advanced=True),
    _s("nerf_background", str, "learned",
       "The NeRF's background where the prior has none of its own (Stable Diffusion): 'learned' (a small MLP of "
       "the view direction) or 'grey' (fixed mid grey, as the Gaussians always use).", "nerf",
       choices=NERF_BACKGROUNDS, representations=("nerf",), advanced=True),
    _s("nerf_init_radius", float, 0.0,
       "Radius of the density blob the NeRF starts from (world units; its visible edge, at half opacity, lies "
       "inside it: 0.25 shows a ball of radius 0.185, 0.36 one of 0.29, the Gaussians' starting ball). 0: auto, "
       "0.25 on a prior that sees the camera (procedural), which pulls the size to its own, and 0.36 on one that "
       "does not (Stable Diffusion), which keeps about the size it starts from (docs/METHODS.md, session 14).",
       "nerf", 0.0, 0.5, representations=("nerf",), advanced=True),
    _s("nerf_pixel_jitter", bool, False,
       "Cast each training ray through a random point of its pixel rather than its centre, so the renders the "
       "prior judges are, on average, the pixel's area as the prior's own images are (not yet the default: "
       "measured in docs/METHODS.md).", "nerf", representations=("nerf",), advanced=True),
    _s("nerf_normal_eps", float, 0.01,
       "Step of the central differences giving NeRF normals (0: analytic density gradient, which carries the "
       "hash grid's cell-scale noise and needs a double backward).", "nerf", 0.0, 0.1, representations=("nerf",),
       advanced=True),
    _s("gaussian_points", int, 5000, "Initial number of Gaussians (DreamGaussian: 5000).", "gaussians",
       100, 1000000, representations=("gaussians",), advanced=True),
    _s("gaussian_max_points", int, 200000, "Cap on the number of Gaussians after densification.", "gaussians",
       100, 5000000, representations=("gaussians",), advanced=True),
    _s("gaussian_antialiased", bool, True,
       "Compensate splat opacity for the renderer's one-pixel widening (gsplat's antialiased mode), so the "
       "renders' silhouette is the Gaussians' 3D extent (docs/METHODS.md).", "gaussians",
       representations=("gaussians",), advanced=True),
    _s("gaussian_supersample", int, 2,
       "Rasterise splats at this many times the render size and average down (a pixel's area, as the procedural "
       "world renders its truth), so the renderer's widening of each splat stays under a pixel. 2 raised the "
       "suite's voxel IoU median 0.964 -> 0.980 (GPU standard) and 0.893 -> 0.941 (CPU draft), and lowered the "
       "draft white cube (docs/METHODS.md).",
       "gaussians", 1, 4, representations=("gaussians",), advanced=True),
    _s("gaussian_opacity_reset", bool, True,
       "Reset opacities to their initial value once, at 30% of the run, so floaters must earn their opacity again "
       "(3DGS). Off lowered the quality suite's voxel IoU median 0.81 -> 0.78 (docs/METHODS.md).", "gaussians",
       representations=("gaussians",), advanced=True),
    _s("procedural_resolution", int, 64, "Working resolution of the procedural prior.", "job", 16, 256,
       advanced=True),
    # --- outputs ------------------------------------------------------------------------------------
    _s("preview_every", int, 100, "Steps between preview images (0: none).", "output", 0, 100000),
    _s("checkpoint_every", int, 500, "Steps between checkpoints a run can resume from (0: none).", "output",
       0, 1000000, advanced=True),
    _s("mesh_resolution", int, 192, "Marching-cubes grid resolution.", "output", 32, 512),
    _s("texture_size", int, 1024, "Baked texture side in texels.", "output", 64, 8192),
    _s("mesh_smooth_iterations", int, 0,
       "Taubin smoothing passes over the extracted mesh, before decimation and baking: flattens the lumps of a "
       "trained field's level set and keeps the volume (0: off). 10 lowered six CPU draft Gaussian runs' normal "
       "error median 10.7 -> 6.4 degrees and raised five of their voxel IoUs; the cube's fell 0.0025 "
       "(docs/METHODS.md, session 13). Off by default until the GPU standard preset is measured with it.",
       "output", 0, 100, advanced=True),
    # --- texture refinement of a generated asset (CSD's second stage, after Magic3D) ---------------------------
    _s("texture_refine_steps", int, 0,
       "Steps of an optional stage after mesh extraction that trains only the extracted mesh's texture (geometry "
       "fixed) at texture_refine_resolution, as CSD's second stage (after Magic3D) refines its mesh's appearance at "
       "a higher resolution; 0: off. Off by default until the quality suite shows it helps (docs/METHODS.md, "
       "session 15).", "texture_refine", 0, 100000, advanced=True),
    _s("texture_refine_resolution", int, 64,
       "Render side of the texture refinement's views. The procedural prior is loaded at this side for the stage; "
       "Stable Diffusion takes its own 512 px input whatever the side.", "texture_refine", 16, 1024, advanced=True),
    # --- texturing a user's mesh (python -m backend texture) ------------------------------------------
    _s("texture_fit", bool, True,
       "Texturing a mesh: centre it and scale its longest side to 0.7 for the training cameras when it does not "
       "already lie in the unit box with a longest side of at least 0.35 (the written mesh keeps its own "
       "coordinates).", "texture", advanced=True),
    _s("decimate_faces", int, 50000,
       "Most faces of the exported mesh, reached by quadric decimation (0: keep every marching-cubes face).",
       "output", 0, 10000000, advanced=True),
    # --- the 2D experiment ------------------------------------------------------------------------
    _s("image_steps", int, 500, "Steps of the 2D image experiment.", "image", 1, 100000),
    _s("image_lr", float, 0.03, "Adam learning rate of the 2D experiment's image (or latents).", "image",
       1e-6, 10.0),
    _s("image_init_std", float, 0.1,
       "Standard deviation of the 2D experiment's random initial sample (1 = the diffusion's own noise "
       "level; see docs/METHODS.md for why the default is lower).", "image", 0.0, 2.0, advanced=True),
    _s("image_batch", int, 1, "Noise samples per step in the 2D experiment.", "image", 1, 64, advanced=True),
)

SCHEMA: dict[str, Setting] = {s.name: s for s in _ALL}
# CSD's edit: a refine's, never a new job's (check_new_job), never inherited by a refine (refine_base).
EDIT_SETTINGS: tuple[str, ...] = tuple(s.name for s in _ALL if s.group == "edit")

# Quality presets: overrides applied under explicit settings. "draft" is sized for a CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "draft": {"steps": 600, "render_res_start": 32, "render_res_end": 32, "procedural_resolution": 32,
              "nerf_samples_per_ray": 48, "nerf_grid_levels": 8, "nerf_grid_log2_table": 15,
              "gaussian_points": 2000, "gaussian_max_points": 10000, "mesh_resolution": 64, "texture_size": 256,
              "preview_every": 100, "checkpoint_every": 0,
              # At 32 px renders the finite-difference normals of a coarse field are noisy and the orientation
              # term flattens and shrinks shapes (red cube voxel IoU 0.68 with it, 0.83 without; docs/METHODS.md).
              "lambda_orientation_start": 0.0, "lambda_orientation_end": 0.0},
    "standard": {},
    "high": {"steps": 20000, "nerf_samples_per_ray": 256, "mesh_resolution": 256, "texture_size": 2048,
             "decimate_faces": 200000},
}


# Per-representation overrides of a preset. Gaussians converge in far fewer steps than a NeRF (DreamGaussian: 500;
# GaussianDreamer: 1,200), and a step costs about as much (the SD encoder and UNet dominate, BENCHMARKS.md).
REPRESENTATION_PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    # 600 steps at the standard lr leave a draft NeRF swollen, still carving its excess away (excess volume 0.13 on a
    # red cube at 600 steps, 0.07 at 1,200 or at lr 0.02; draft study, docs/METHODS.md "Session 8"). Gaussians move
    # by their own rates and lost shape at 0.02, so only the NeRF's draft takes the larger step.
    ("nerf", "draft"): {"lr": 0.02},
    ("gaussians", "standard"): {"steps": 1500},
    ("gaussians", "high"): {"steps": 3000},
}


def preset_values(quality: str, representation: str) -> dict[str, Any]:
    """What the quality preset sets for this representation (over the schema defaults)."""
    if quality not in PRESETS:
        raise SettingsError(f"setting 'quality' is {quality!r}; allowed: {', '.join(PRESETS)}")
    return {**PRESETS[quality], **REPRESENTATION_PRESETS.get((representation, quality), {})}


def defaults() -> dict[str, Any]:
    return {name: s.default for name, s in SCHEMA.items()}


def validate(values: Mapping[str, Any] | None = None, *, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Merge ``values`` over ``base`` (the defaults when None) and check every entry.

    Unknown names and bad values raise SettingsError naming what is wrong and
    what is allowed. Returns a complete settings dict.
    """
    values = dict(values or {})
    out = dict(defaults() if base is None else base)
    preset = values.get("quality", out.get("quality", "standard"))
    if not isinstance(preset, str):  # a list or object would not even be hashable
        raise SettingsError(f"setting 'quality' must be a string, one of {', '.join(PRESETS)}; got {preset!r:.60}")
    representation = values.get("representation", out.get("representation", "nerf"))
    if base is None:
        out.update(preset_values(preset, representation if representation in REPRESENTATIONS else "nerf"))
    elif preset not in PRESETS:
        raise SettingsError(f"setting 'quality' is {preset!r}; allowed: {', '.join(PRESETS)}")
    for name, value in values.items():
        setting = SCHEMA.get(name)
        if setting is None:
            raise SettingsError(
                f"unknown setting '{name}'; known settings: {', '.join(sorted(SCHEMA))}"
            )
        out[name] = setting.check(value)
    for low, high in (("t_min", "t_max"), ("camera_distance_min", "camera_distance_max"),
                      ("camera_elevation_min", "camera_elevation_max"), ("camera_fovy_min", "camera_fovy_max"),
                      ("light_elevation_offset_min", "light_elevation_offset_max")):
        if out[low] > out[high]:
            raise SettingsError(f"{low} ({out[low]}) must not exceed {high} ({out[high]})")
    return out


def editing(settings: Mapping[str, Any]) -> bool:
    """Whether a job runs CSD's edit instead of its method: a refine that names an edit prompt."""
    return bool(settings["edit_prompt"].strip())


def check_new_job(settings: Mapping[str, Any]) -> None:
    """Raise SettingsError when a new job (not a refine) names an edit: there is nothing to edit yet."""
    if editing(settings):
        raise SettingsError(
            f"setting 'edit_prompt' ({settings['edit_prompt']!r}) edits an existing asset, so it goes with a refine "
            "(the add-on's Refine, `generate --resume CHECKPOINT`, the wire's refine); a new job has nothing to edit")


def refine_base(source: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a refine starts from: its source's, without the source's edit (an edit belongs to the refine
    that names it, so a refine of an edited asset runs the job's method unless it names an edit of its own)."""
    return {**source, **{name: SCHEMA[name].default for name in EDIT_SETTINGS}}


def resolved_negative_prompt(settings: Mapping[str, Any]) -> str:
    """The negative branch's text: an edit's y_edit (CSD's eq. 11 puts it where eq. 10 has y_neg), else the
    general negative prompt a method uses: the setting, else the method's published one."""
    if editing(settings):
        return settings["edit_prompt"]
    return settings["negative_prompt"] or DEFAULT_NEGATIVE_BY_METHOD.get(settings["method"], "")


def resolved_weighting(settings: Mapping[str, Any]) -> str:
    w = settings["weighting"]
    if w != "auto":
        return w
    return EDIT_WEIGHTING if editing(settings) else DEFAULT_WEIGHTING_BY_METHOD[settings["method"]]


def reads_ip_adapter(method: str, model: str) -> bool:
    """Whether a job reads ``ip_adapter``: a method tagged for it (isd) on a Stable Diffusion model. The procedural
    prior answers image prompts itself."""
    return method in (SCHEMA["ip_adapter"].methods or ()) and model != PROCEDURAL_MODEL


def settings_for(method: str, representation: str | None = None) -> list[Setting]:
    """The settings a job of ``method`` uses, on ``representation`` (None: on any)."""
    return [s for s in _ALL if (s.methods is None or method in s.methods)
            and (representation is None or s.representations is None or representation in s.representations)]


def groups() -> Iterable[str]:
    seen: dict[str, None] = {}
    for s in _ALL:
        seen.setdefault(s.group, None)
    return seen.keys()


__all__ = [
    "METHODS", "REPRESENTATIONS", "REFERENCE_SOURCES", "SCHEMA", "PRESETS", "REPRESENTATION_PRESETS", "preset_values", "Setting", "SettingsError", "defaults", "validate",
    "resolved_negative_prompt", "resolved_weighting", "settings_for", "groups", "EDIT_SETTINGS", "editing",
    "check_new_job", "refine_base", "reads_ip_adapter", "PROCEDURAL_MODEL",
    "TARGET_NEGATIVE_DESCRIPTORS", "NFSD_NEGATIVE", "CSD_NEGATIVE", "BSD_NEGATIVE",
]
