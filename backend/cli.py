"""Command line: `python -m backend image|...`. Flags for settings come from shared.settings.SCHEMA."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from backend.jobs.slots import GIB, JOB_PEAK_BYTES, MPS_MAX_JOBS, NO_MPS_MAX_JOBS, Setting, parse_setting
from shared.settings import EDIT_SETTINGS, SCHEMA, SettingsError, check_new_job, editing, validate


def _add_setting_flags(parser: argparse.ArgumentParser, skip: set[str]) -> None:
    group = parser.add_argument_group("settings (shared schema; defaults in brackets)")
    for name, s in SCHEMA.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        extra = f" [{s.default!r}]"
        if s.choices:
            extra += f" one of {', '.join(s.choices)}"
        elif s.minimum is not None:
            extra += f" range {s.range_text()}"
        # argparse reads help as a %-format string; the schema's texts (and defaults, choices) are plain text.
        text = (s.help + extra).replace("%", "%%")
        if s.kind is bool:
            group.add_argument(flag, dest=name, default=None, type=_parse_bool, metavar="true|false", help=text)
        else:
            group.add_argument(flag, dest=name, default=None, type=s.kind, help=text)


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend", description="Text-to-3D backend (score distillation).")
    sub = parser.add_subparsers(dest="command", required=True)
    image = sub.add_parser("image", help="The papers' 2D experiment: optimise one image with a method's gradient.")
    image.add_argument("prompt", help="Text prompt, e.g. 'a red cube'.")
    image.add_argument("--out", required=True, type=Path, help="Output PNG; a JSON record is written beside it.")
    image.add_argument("--steps", dest="image_steps", type=int, default=None,
                       help=f"Optimisation steps [{SCHEMA['image_steps'].default}].")
    image.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    image.add_argument("--image", type=Path, default=None, help=IMAGE_HELP)
    image.add_argument("--quiet", action="store_true", help="No progress bar.")
    _add_setting_flags(image, skip={"image_steps", "steps", "representation", *EDIT_SETTINGS})

    gen = sub.add_parser("generate", help="Text to textured mesh: train a NeRF or 3D Gaussians, export GLB/OBJ/PLY.")
    gen.add_argument("prompt", help="Text prompt, e.g. 'a red cube'.")
    gen.add_argument("--out", required=True, type=Path, help="Output folder (mesh.glb, mesh.obj, preview.png, job.json).")
    gen.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    gen.add_argument("--resume", type=Path, default=None,
                     help="Continue from a checkpoint.pt of an earlier run (generate or texture), to that run's end; with "
                          "--steps N, N more steps. With --edit-prompt ATTRIBUTE, edit it toward the prompt instead "
                          "(CSD's text editing), e.g. 'a green cube' --edit-prompt red on a red cube's checkpoint; a "
                          "texture job's keeps its mesh and changes only its colour.")
    gen.add_argument("--image", type=Path, default=None, help=IMAGE_HELP)
    gen.add_argument("--quiet", action="store_true", help="No progress bar.")
    _add_setting_flags(gen, skip=set(IMAGE_ONLY))

    tex = sub.add_parser("texture", help="Texture a mesh you made: train only its colour with a method, bake it "
                                         "into the mesh's UVs (new ones when it has none), write GLB/OBJ/PLY.")
    tex.add_argument("mesh", type=Path, help="Triangle mesh: .glb, .obj (+Y up, Blender's default) or .ply (+Z up).")
    tex.add_argument("prompt", help="Text prompt, e.g. 'a blue cube'.")
    tex.add_argument("--out", required=True, type=Path, help="Output folder (mesh.glb, mesh.obj, preview.png, job.json).")
    tex.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    tex.add_argument("--quiet", action="store_true", help="No progress bar.")
    _add_setting_flags(tex, skip=set(IMAGE_ONLY) | set(NOT_TEXTURE) | set(EDIT_SETTINGS))

    batch = sub.add_parser("batch", help="Many prompts: one folder per row, a summary table and a contact sheet; "
                                         "a rerun skips finished rows.")
    batch.add_argument("prompts", type=Path,
                       help="Text file (one prompt a line; blank lines and # comments skipped) or CSV with a 'prompt' "
                            "column and settings columns (method, representation, seed, quality, ...).")
    batch.add_argument("--out", required=True, type=Path,
                       help="Output folder: one folder per row, summary.json, summary.md, contact_sheet.png.")
    batch.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    batch.add_argument("--quiet", action="store_true", help="No progress bar.")
    # --workers was batch's name for the same number before serve had one; kept so existing commands still run.
    _add_executor_flags(batch, ("--workers",))
    _add_setting_flags(batch, skip=set(IMAGE_ONLY) | set(EDIT_SETTINGS))

    serve = sub.add_parser("serve", help="The ZeroMQ job server for the Blender add-on (docs/PROTOCOL.md).")
    serve.add_argument("--bind", default="tcp://127.0.0.1:5555",
                       help="ZeroMQ endpoint [tcp://127.0.0.1:5555]; a non-loopback one needs the CURVE flags.")
    serve.add_argument("--results", type=Path, default=Path("results"),
                       help="Results folder: one folder per job (job.json, meshes, checkpoint) [results].")
    serve.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    serve.add_argument("--model", default="procedural",
                       help="Diffusion prior of jobs that name none (a job's 'model' setting picks another) [procedural].")
    serve.add_argument("--models-dir", type=Path, default=None,
                       help="Folder of diffusers model folders offered to clients beside the Hugging Face cache.")
    serve.add_argument("--curve-secret-key", type=Path, default=None,
                       help="Server's zmq.auth secret key file (from `python -m backend keys DIR`: DIR/server.key_secret).")
    serve.add_argument("--curve-client-keys", type=Path, default=None,
                       help="Folder of authorised client public keys (DIR/authorized_clients).")
    serve.add_argument("--job-silence-timeout", type=float, default=900.0,
                       help="Seconds a job's worker may report nothing (one step, or the final export) before it "
                            "is killed as hung and the job fails [900].")
    serve.add_argument("--shutdown-grace", type=float, default=10.0,
                       help="Seconds a SIGTERM waits for the running job to checkpoint before its worker is killed [10].")
    serve.add_argument("--max-unread-mib", type=float, default=64.0,
                       help="MiB of big replies (meshes, previews) held for one connection that is not reading [64].")
    _add_executor_flags(serve)

    bench = sub.add_parser("bench", help="GPU benchmark: ms per step by phase, peak memory, TFLOP/s, asset and "
                                         "first-preview seconds (BENCHMARKS.md). JSON out.")
    bench.add_argument("--out", type=Path, default=None, help="JSON file to write (also printed line by line).")
    bench.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    bench.add_argument("--priors", default="procedural,sd21-random",
                       help="Comma list of procedural, sd21-random (random weights of SD 2.1-base), sd15-ip-random "
                            "(random SD 1.5 + its IP-Adapter and ViT-H image encoder: ISD's cost) [the first two].")
    bench.add_argument("--methods", default="tbsd", help="Comma list of methods [tbsd].")
    bench.add_argument("--representations", default="gaussians,nerf")
    bench.add_argument("--acceleration", default="all",
                       help="Semicolon list of SD acceleration levels to compare: none, all, or comma lists of "
                            "channels_last, cuda_graphs [all].")
    bench.add_argument("--hashgrid", default="auto", help="Comma list of NeRF hash-grid backends: auto, torch, triton.")
    bench.add_argument("--steps", type=int, default=30, help="Timed steps per configuration (0: none) [30].")
    bench.add_argument("--resolution", type=int, default=None,
                       help="Render resolution of the timed steps [the paper's: NeRF 256, Gaussians 512].")
    bench.add_argument("--warmup", type=int, default=10, help="Untimed steps first [10].")
    bench.add_argument("--assets", action="store_true", help="Also time a whole default-preset asset per representation.")
    bench.add_argument("--asset-settings", default="", help="Settings for the asset runs as JSON, e.g. '{\"steps\": 1000}'.")
    bench.add_argument("--server", action="store_true", help="Also time submit -> first preview through a real server.")
    bench.add_argument("--server-model", default="procedural", help="--model for that server [procedural].")
    bench.add_argument("--server-settings", default="", help="Job settings for the server run as JSON.")

    keys = sub.add_parser("keys", help="Make CURVE key pairs for a server reachable from the network.")
    keys.add_argument("folder", type=Path, help="Where to write server.key(_secret), client.key(_secret).")
    return parser


IMAGE_ONLY = ("image_steps", "image_lr", "image_init_std", "image_batch")
IMAGE_HELP = ("Reference image, PNG or JPEG (an image-prompt method, --method isd, makes the prompt's mode it shows); "
              "read at most 4096 px a side and 2048 x 2048 pixels, transparency laid on mid grey. Without it, isd "
              "draws a reference from the prior (--reference-source sample).")
# Settings of a generated scene's shape that a texture job (fixed geometry) never reads.
NOT_TEXTURE = ("representation", "mesh_resolution", "decimate_faces", "texture_refine_steps",
               "texture_refine_resolution")


def _jobs_per_gpu(text: str) -> Setting:
    try:
        return parse_setting(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_executor_flags(parser: argparse.ArgumentParser, aliases: tuple[str, ...] = ()) -> None:
    group = parser.add_argument_group("where jobs run (docs/SCALE.md)")
    group.add_argument("--jobs-per-gpu", *aliases, dest="jobs_per_gpu", type=_jobs_per_gpu, default="auto",
                       metavar="N|auto",
                       help="Jobs run at once on the device, each in its own worker process. auto: 1 on the CPU; on "
                            f"a GPU its free memory / {JOB_PEAK_BYTES // GIB} GiB a job, at most {MPS_MAX_JOBS} "
                            f"when CUDA MPS runs (docs/SCALE.md) and {NO_MPS_MAX_JOBS} when not (without MPS the "
                            "jobs time-slice the GPU). With --executor ray, N actors share each GPU [auto].")
    group.add_argument("--executor", default="local", choices=("local", "ray"),
                       help="local: worker processes on this machine; ray: one actor per GPU of a Ray cluster "
                            "(needs `pip install 'tbsd-studio[ray]'`) [local].")
    group.add_argument("--ray-address", default="local",
                       help="With --executor ray: 'local' starts a Ray instance on this machine; 'auto' or "
                            "host:port joins a running cluster (`ray start --head`) [local].")
    group.add_argument("--ray-gpus-per-actor", type=float, default=None,
                       help="GPUs each actor holds; 0.5 puts two actors (two jobs) on each GPU; 0 with "
                            "--ray-actors N runs N actors on CPUs [1, or 1/N with --jobs-per-gpu N].")
    group.add_argument("--ray-cpus-per-actor", type=float, default=1.0,
                       help="CPUs each actor holds (and its torch threads, as Ray sets OMP_NUM_THREADS) [1].")
    group.add_argument("--ray-actors", type=int, default=None,
                       help="Number of actors [as many as the cluster's GPUs hold].")
    group.add_argument("--ray-retries", type=int, default=1,
                       help="Times a job whose actor died (killed, crashed, node lost) runs again from the start "
                            "before it fails [1].")


def ray_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """RayExecutor's options from the flags, or None for the local executor. ``--jobs-per-gpu N`` is N actors a
    GPU; ``auto`` leaves Ray one actor a GPU, since this machine cannot probe the cluster's GPUs."""
    if args.executor != "ray":
        return None
    gpus = args.ray_gpus_per_actor
    if args.jobs_per_gpu != "auto":
        if gpus is not None:
            raise SettingsError("--jobs-per-gpu and --ray-gpus-per-actor both say how many jobs share a GPU; "
                                "give one of them")
        gpus = 1.0 / args.jobs_per_gpu
    return {"address": args.ray_address, "gpus_per_actor": 1.0 if gpus is None else gpus,
            "cpus_per_actor": args.ray_cpus_per_actor, "actors": args.ray_actors, "max_retries": args.ray_retries}


def _given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Only the settings named on the command line."""
    return {name: getattr(args, name) for name in SCHEMA if getattr(args, name, None) is not None}


def _given_reference(args: argparse.Namespace, given: dict[str, Any]) -> None:
    """With --image: check it fits the method and settings (SettingsError naming what to change) and select
    reference_source 'image'."""
    from backend.distill.methods import METHODS as METHOD_TABLE

    if getattr(args, "image", None) is None:
        return
    method = given.get("method", SCHEMA["method"].default)
    if method in METHOD_TABLE and not METHOD_TABLE[method].image_prompt:
        raise SettingsError(f"--image is a reference image for an image-prompt method; method '{method}' reads "
                            "none (add --method isd)")
    if given.get("reference_source", "image") != "image":
        raise SettingsError(f"--image gives a reference image but --reference-source is "
                            f"'{given['reference_source']}'; drop one of them")
    if getattr(args, "resume", None) is not None:
        raise SettingsError("--image cannot go with --resume: a run continued from a checkpoint keeps its own "
                            "reference image")
    given["reference_source"] = "image"


def _settings(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """Validated settings and the device."""
    from backend.priors import resolve_device

    given = _given_settings(args)
    _given_reference(args, given)
    device = resolve_device(args.device)
    if (args.command == "texture" or args.command == "generate" and args.resume is None) and "quality" not in given \
            and device.type == "cpu":
        # The standard preset is sized for a GPU (a NeRF's 10,000 steps at 64-256 px take hours on a CPU); an
        # artist without one gets the preset made for a CPU and is told how to ask for the other.
        given["quality"] = "draft"
        print("no GPU: using --quality draft (sized for a CPU, minutes per asset); pass --quality standard to "
              "override", file=sys.stderr)
    settings = validate(given)
    if getattr(args, "resume", None) is None:  # a resumed run keeps its checkpoint's settings
        from backend.ip_adapter_source import needs_adapter

        problem = needs_adapter(settings["method"], settings["model"], settings["ip_adapter"])
        if problem:  # before the prior loads: seconds of loading for an error known now
            raise SettingsError(problem.replace("set ip_adapter", "set ip_adapter (--ip-adapter)"))
    return settings, device


def _load(args: argparse.Namespace) -> tuple[dict[str, Any], Any, Any, float]:
    """Validated settings, the device, the prior and the seconds its loading took."""
    from backend.priors import load_prior

    settings, device = _settings(args)
    t0 = time.perf_counter()
    from backend.jobs.runner import job_adapter

    prior = load_prior(settings["model"], device, settings["procedural_resolution"], job_adapter(settings))
    return settings, device, prior, time.perf_counter() - t0


def run_image(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from backend.distill.step import prompt_set
    from backend.image2d import optimise_image
    from backend.images import save_png
    from backend.scene.cameras import front_view

    from backend.reference import Reference, read_reference_file, save_reference
    from backend.reference import job_reference

    given_pixels = None if args.image is None else read_reference_file(args.image)  # before loading the prior
    settings, device, prior, load_seconds = _load(args)
    prior.check_prompts(prompt_set(args.prompt, settings))  # fail before any work on a bad prompt
    given = None if given_pixels is None else Reference(given_pixels, "image", args.image.name)
    reference = job_reference(prior, args.prompt, settings, given)
    bar = None if args.quiet else tqdm(total=settings["image_steps"], desc=f"{settings['method']} '{args.prompt}'",
                                       unit="step", file=sys.stderr)

    def on_step(step: int, total: int, loss: float, record: dict[str, Any]) -> None:
        if bar is not None:
            bar.update(1)
            if step % 10 == 0 or step == total:
                bar.set_postfix(loss=f"{loss:.3g}", t=int(record["t"]))

    run = optimise_image(prior, args.prompt, settings, on_step,
                         reference=None if reference is None else reference.tensor())
    if bar is not None:
        bar.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_png(run.image, args.out)
    reference_file = args.out.with_name(args.out.stem + "_reference.png")
    if reference is not None:  # beside the result: the pixels the method read
        save_reference(args.out.parent, reference.pixels, reference_file.name)
    record: dict[str, Any] = {
        "command": "image",
        "prompt": args.prompt,
        "settings": settings,
        "device": str(device),
        "seconds": {"load_prior": round(load_seconds, 3), "optimise": round(run.seconds, 3)},
        "image": args.out.name,
        "image_size": list(run.image.shape[-2:]),
        "trace_summary": _trace_summary(run.trace),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }
    if reference is not None:
        record["reference"] = {**reference.record(), "file": reference_file.name}
    if settings["model"] == "procedural":
        record["figures"] = _procedural_figures(args.prompt, run.image, front_view(1), prior,
                                                None if reference is None else prompt_set(
                                                    args.prompt, settings, reference.tensor()).reference)
    json_path = args.out.with_suffix(".json")
    json_path.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out} and {json_path}")
    if "figures" in record and record["figures"]:
        print("figures: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in record["figures"].items()))
    return 0


def _trace_summary(trace: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each traced figure over the first, middle and last tenth of the run."""
    if not trace:
        return {}
    n = len(trace)
    tenth = max(1, n // 10)
    windows = {"start": trace[:tenth], "middle": trace[n // 2 - tenth // 2 : n // 2 - tenth // 2 + tenth], "end": trace[-tenth:]}
    keys = [k for k, v in trace[0].items() if isinstance(v, (int, float)) and k != "step"]
    return {w: {k: sum(r[k] for r in rows) / len(rows) for k in keys} for w, rows in windows.items()}


def _procedural_figures(prompt: str, image: Any, views: Any, prior: Any, reference: Any = None) -> dict[str, Any]:
    """Figures against the object the prompt names; for a prompt naming many, against the object the image is
    nearest (``landed``) or, with a reference image, the one the reference selects (``reference_mode``)."""
    from backend.metrics import image_figures
    from backend.priors.procedural.world import ground_truth, parse_prompt

    meaning = parse_prompt(prompt)
    if len(meaning.shapes) == 1 and len(meaning.colours) == 1:
        truth, _ = ground_truth(prompt, views, prior.resolution)
        return image_figures(image, truth[0])
    everything = parse_prompt("").components()
    means, _ = prior.components("", views)  # every object of the world from this camera
    mse = ((means[0] + 1) / 2 - image[None].to(means)).pow(2).flatten(1).mean(-1)
    landed = everything[int(mse.argmin())]
    out: dict[str, Any] = {"landed": f"a {landed.colour} {landed.shape}"}
    target = out["landed"]
    mode = None if reference is None else prior.reference_mode(prompt, reference)
    if mode is not None:
        target = out["reference_mode"] = f"a {mode.colour} {mode.shape}"
        out["in_reference_mode"] = out["landed"] == target
    truth, _ = ground_truth(target, views, prior.resolution)
    return {**image_figures(image, truth[0]), **out}


def run_generate(args: argparse.Namespace) -> int:
    from backend.jobs.runner import JobPlan, JobRun
    from backend.priors import load_prior

    settings, device = _settings(args)
    if args.resume is None:
        check_new_job(settings)
    if args.image is not None:
        from backend.reference import read_reference_file

        read_reference_file(args.image)  # refuse a bad image before making the folder or loading the prior
    args.out.mkdir(parents=True, exist_ok=True)
    plan = JobPlan(args.prompt, settings, args.out, reference=args.image,
                   reference_name=None if args.image is None else args.image.name)
    if args.resume is not None:
        given = _given_settings(args)
        if editing(settings) and "steps" not in given:
            # "On to the run's end" is no step at all for a finished run, so an edit says how long it runs.
            raise SettingsError("an edit (--edit-prompt) continues a run for --steps N more steps; give --steps")
        # --steps with --resume: that many more steps; without it, on to the run's end
        plan.source, plan.more_steps, plan.overrides = args.resume, given.pop("steps", None), given or None
    run = JobRun(plan, device, lambda model, resolution, adapter: load_prior(model, device, resolution, adapter))
    trainer = run.prepare()
    plan.checkpoint = trainer.settings["checkpoint_every"] > 0
    checkpoint = args.out / "checkpoint.pt" if plan.checkpoint else None
    return _train_and_finish(run, trainer, args, f"{trainer.distill.spec.name} {trainer.settings['representation']}",
                             checkpoint)


def _train_and_finish(run: Any, trainer: Any, args: argparse.Namespace, desc: str, checkpoint: Path | None) -> int:
    """Train ``run`` with a progress bar, finish it (meshes, preview, job.json) and say what was written."""
    from tqdm import tqdm

    from backend.train import TrainEvents

    bar = None if args.quiet else tqdm(total=trainer.total, initial=trainer.step, unit="step", file=sys.stderr,
                                       desc=desc)

    def on_progress(p: Any) -> None:
        if bar is not None:
            bar.update(p.step - bar.n)
            if p.step % 25 == 0 or p.step == p.total:  # reading the loss waits for the GPU
                bar.set_postfix(loss=f"{p.loss:.3g}")

    try:
        run.train(TrainEvents(on_progress=on_progress, checkpoint_path=checkpoint))
    finally:
        if bar is not None:
            bar.close()
    record = run.finish().record
    print(f"wrote {', '.join(record['files'].values())}, preview.png and job.json in {args.out}")
    if record.get("figures"):
        print("figures: " + ", ".join(f"{k} {v:.3f}" for k, v in record["figures"].items() if isinstance(v, float)))
    return 0


def run_texture(args: argparse.Namespace) -> int:
    from backend.export.meshread import MeshFileError, read_mesh
    from backend.jobs.runner import JobPlan, JobRun
    from backend.priors import load_prior

    settings, device = _settings(args)
    try:
        read_mesh(args.mesh)  # refuse a bad mesh before making the folder or loading the prior
    except MeshFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    # As generate: a checkpoint (which holds the mesh) when checkpoint_every asks, so `generate --resume` refines or
    # edits the result by text.
    checkpoint = settings["checkpoint_every"] > 0
    plan = JobPlan(args.prompt, settings, args.out, checkpoint=checkpoint, mesh=args.mesh)
    run = JobRun(plan, device, lambda model, resolution, adapter: load_prior(model, device, resolution, adapter))
    trainer = run.prepare()
    return _train_and_finish(run, trainer, args, f"{settings['method']} texture",
                             args.out / "checkpoint.pt" if checkpoint else None)


def run_batch(args: argparse.Namespace) -> int:
    from backend.batch import make_executor, run_rows
    from backend.batch_input import BatchInputError, read_rows
    from backend.batch_report import write_report
    from backend.jobs.ray_executor import RayMissing, RayUnusable
    from backend.jobs.results import ResultsRefused, ResultStore
    from backend.jobs.slots import resolve as resolve_slots
    from backend.priors import resolve_device

    given = _given_settings(args)
    # Nobody watches a batch train: no preview renders unless asked for (the final preview.png is always made).
    given.setdefault("preview_every", 0)
    device = resolve_device(args.device)
    if args.executor == "local" and "quality" not in given and device.type == "cpu":
        given["quality"] = "draft"  # as generate does: the standard preset is sized for a GPU
        print("no GPU: using --quality draft for rows that name no quality; pass --quality standard to override",
              file=sys.stderr)
    try:
        rows = read_rows(args.prompts, given)
        store = ResultStore(args.out)
        options = ray_options(args)
        jobs = 1
        if options is None:
            slots = resolve_slots(args.jobs_per_gpu, str(device))
            print(f"batch: {slots.jobs} job(s) at once on {device} ({slots.why})", file=sys.stderr)
            jobs = slots.jobs
        executor = make_executor(args.executor, store, args.device, jobs, options)
    except (BatchInputError, ResultsRefused, RayMissing) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        outcomes, interrupted = run_rows(rows, store, executor, quiet=args.quiet)
    except RayUnusable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = write_report(outcomes, args.out, args.prompts, args.executor)
    if interrupted:
        print(f"batch: interrupted with {summary['finished']} of {summary['rows']} rows finished; run the same "
              "command again to continue", file=sys.stderr)
        return 130
    print(f"batch: {summary['finished']} of {summary['rows']} rows finished, {summary['failed']} failed; "
          f"{args.out / 'summary.md'}, {args.out / 'contact_sheet.png'}")
    return 0 if summary["finished"] == summary["rows"] else 1


def run_serve(args: argparse.Namespace) -> int:
    import logging

    from backend.jobs.ray_executor import RayMissing, RayUnusable
    from backend.jobs.results import ResultsRefused
    from backend.server.security import BindRefused, CurveConfig, check_bind

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if (args.curve_secret_key is None) != (args.curve_client_keys is None):
        print("error: --curve-secret-key and --curve-client-keys go together (server key, authorised clients)",
              file=sys.stderr)
        return 2
    curve = CurveConfig(args.curve_secret_key, args.curve_client_keys) if args.curve_secret_key else None
    try:
        check_bind(args.bind, curve)  # refuse before importing torch or touching a GPU
        from backend.server.app import serve

        return serve(args.bind, args.results, args.device, args.model, curve, args.models_dir,
                     args.job_silence_timeout, args.shutdown_grace, int(args.max_unread_mib * 1024 * 1024),
                     ray=ray_options(args), jobs_per_gpu=args.jobs_per_gpu)
    except (BindRefused, ResultsRefused, RayMissing, RayUnusable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run_keys(args: argparse.Namespace) -> int:
    from backend.server.security import make_keys

    paths = make_keys(args.folder)
    print(f"server: --curve-secret-key {paths['server_secret']} --curve-client-keys {paths['authorized_clients']}")
    print(f"client: server public key {paths['server_public']}, client key pair {paths['client_secret']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from backend.priors.base import PriorError
    from shared.reference_image import ReferenceImageError

    try:
        if args.command == "image":
            return run_image(args)
        if args.command == "generate":
            return run_generate(args)
        if args.command == "texture":
            return run_texture(args)
        if args.command == "batch":
            return run_batch(args)
        if args.command == "serve":
            return run_serve(args)
        if args.command == "keys":
            return run_keys(args)
        if args.command == "bench":
            from backend.benchmark import run as run_bench

            run_bench(args)
            return 0
    except (SettingsError, PriorError, ReferenceImageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1
