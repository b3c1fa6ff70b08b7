"""Side-by-side tables of the methods from quality-suite results (bench/quality.py's JSON).

Reads any number of result files: a study's own ``quality.json`` (``{"runs": [...]}``) or a committed file that
gathers several (``{"studies": {name: {"runs": [...]}}}``). Per (preset, representation) it prints a summary per method,
a per-prompt table of voxel IoU / colour error, and every prompt on which another method has a lower colour error at
an equal or higher IoU than the reference method: the cells where the TBSD paper's claim (better colour at equal or
better shape) fails here.

    python bench/quality_compare.py bench/results/quality/gpu_standard_methods_s9_h200x2.json \\
        bench/results/quality/gpu_standard_s8_h200x2.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from backend.priors.procedural import world  # noqa: E402
from quality import SUITE, summarise  # noqa: E402
from shared.settings import METHODS  # noqa: E402

LABELS = {"tbsd": "TBSD", "sds": "SDS", "nfsd": "NFSD", "csd": "CSD", "bridge": "Bridge", "bsd": "BSD", "isd": "ISD"}
REPRESENTATION_LABELS = {"nerf": "NeRF", "gaussians": "Gaussians"}


def load_runs(paths: list[Path]) -> list[dict[str, Any]]:
    """Every finished run (no ``error``) in the files, at the defaults (variant "defaults")."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        data = json.loads(path.read_text())
        studies = data["studies"].values() if "studies" in data else [data]
        rows += [r for s in studies for r in s["runs"] if "error" not in r and r.get("variant") == "defaults"]
    return rows


def better_than_reference(rows: list[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """Runs with a lower colour error than the reference method's run of the same prompt, representation and
    preset, and an IoU at least as high."""
    ref = {(r["preset"], r["representation"], r["prompt"]): r for r in rows if r["method"] == reference}
    found = []
    for r in rows:
        base = ref.get((r["preset"], r["representation"], r["prompt"]))
        if (r["method"] != reference and base is not None and r["colour_error_mean"] < base["colour_error_mean"]
                and r["voxel_iou"] >= base["voxel_iou"]):
            found.append({**r, "reference": base})
    return found


def _short(prompt: str) -> str:
    return prompt.split(" ", 1)[1]


def _summary_table(rows: list[dict[str, Any]], methods: list[str], reps: list[str], reference: str) -> list[str]:
    """One row per method and representation: medians and worst cases over the prompts (finished runs only)."""
    out = ["| method | representation | runs | IoU median / min | colour error median / max "
           "| wrong colour median / max | named colour | train s (median) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    summary = {(s["method"], s["representation"]): s for s in summarise(rows)}
    for rep in reps:
        for m in methods:
            s = summary.get((m, rep))
            if s is None:
                continue
            name = f"**{LABELS[m]}**" if m == reference else LABELS[m]
            out.append(f"| {name} | {rep} | {s['runs']} | {s['iou_median']:.3f} / {s['iou_min']:.3f} "
                       f"| {s['colour_median']:.3f} / {s['colour_max']:.3f} "
                       f"| {s['wrong_share_median']:.1%} / {s['wrong_share_max']:.1%} | {s['named_colour']} "
                       f"| {s['train_seconds_median']:.0f} |")
    return out


def _prompt_table(rows: list[dict[str, Any]], prompts: list[str], methods: list[str]) -> list[str]:
    """One row per prompt of one preset and representation: each method's voxel IoU / colour error."""
    cell = {(r["prompt"], r["method"]): r for r in rows}
    out = ["| prompt | " + " | ".join(LABELS[m] for m in methods) + " |", "| --- |" + " --- |" * len(methods)]
    for p in prompts:
        named = world.parse_prompt(p).colours[0]
        cells = []
        for m in methods:
            r = cell.get((p, m))
            if r is None:
                cells.append("not run")
                continue
            wrong = "" if r["nearest_colour"] == named else f" ({r['nearest_colour']})"
            cells.append(f"{r['voxel_iou']:.2f} / {r['colour_error_mean']:.3f}{wrong}")
        if any(c != "not run" for c in cells):
            out.append(f"| {p} | " + " | ".join(cells) + " |")
    return out


def tables(rows: list[dict[str, Any]], reference: str = "tbsd") -> str:
    """Markdown: per preset a summary per method and representation, then per representation a per-prompt table
    and the cells where another method beats ``reference`` on colour at equal or better shape."""
    out: list[str] = []
    prompts = [p for p in SUITE if any(r["prompt"] == p for r in rows)]
    prompts += sorted({r["prompt"] for r in rows} - set(prompts))
    better = better_than_reference(rows, reference)
    for preset in dict.fromkeys(r["preset"] for r in rows):
        at = [r for r in rows if r["preset"] == preset]
        methods = sorted({r["method"] for r in at}, key=lambda m: (m != reference, METHODS.index(m)))
        reps = [rep for rep in REPRESENTATION_LABELS if any(r["representation"] == rep for r in at)]
        out += [f"**{preset} preset**, summary per method:", "", *_summary_table(at, methods, reps, reference)]
        for rep in reps:
            out += ["", f"{preset} preset, {REPRESENTATION_LABELS[rep]}: voxel IoU / colour error (the nearest "
                    "catalogue colour in brackets where it is not the named one):", "",
                    *_prompt_table([r for r in at if r["representation"] == rep], prompts, methods)]
            here = [b for b in better if b["preset"] == preset and b["representation"] == rep]
            listed = "; ".join(f"{LABELS[b['method']]} on the {_short(b['prompt'])} ({b['voxel_iou']:.3f} / "
                               f"{b['colour_error_mean']:.3f} against {b['reference']['voxel_iou']:.3f} / "
                               f"{b['reference']['colour_error_mean']:.3f})" for b in here)
            out += ["", f"Lower colour error at an equal or higher IoU than {LABELS[reference]}: {listed or 'none'}."]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="quality.json files or committed result files.")
    parser.add_argument("--reference", default="tbsd", choices=METHODS, help="The method the others are held to.")
    args = parser.parse_args(argv)
    rows = load_runs(args.results)
    if not rows:
        parser.error("no finished run at the defaults in " + ", ".join(map(str, args.results)))
    print(tables(rows, args.reference))
    return 0


if __name__ == "__main__":
    sys.exit(main())
