"""A batch's summary: one line per row (status, seconds, figures) as ``summary.json`` and ``summary.md``, and a
contact sheet of the rows' preview strips (``contact_sheet.png``). All written atomically (backend/files.py).

Figures: where the procedural prior knows the truth (a prompt naming one shape and one colour), the exported
mesh's figures against it (backend/metrics.py ``mesh_figures``: voxel IoU, Chamfer distance, colour errors,
wrong-colour share, components), read from the row's mesh.glb as the artist gets it.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from backend import records
from backend.batch import Outcome
from backend.files import write_bytes, write_json
from shared.status import JobStatus

FIGURES = ("voxel_iou", "chamfer", "colour_error_mean", "wrong_colour_share", "components")
TILE_HEIGHT = 64
LABEL_HEIGHT = 14
MESH_SAMPLES = 5000  # enough for a summary's two decimals, a fraction of a second per row


def _figures(folder: Path, prompt: str, record: dict[str, Any]) -> dict[str, Any]:
    from backend.export.meshfile import read_glb
    from backend.metrics import mesh_figures
    from backend.priors.procedural import world

    if (record.get("settings") or {}).get("model") != "procedural":
        return {}
    meaning = world.parse_prompt(prompt)
    if len(meaning.shapes) != 1 or len(meaning.colours) != 1:
        return {}  # a prompt spanning several shapes or colours has no single truth
    figures = mesh_figures(read_glb(folder / "mesh.glb"), prompt, samples=MESH_SAMPLES)
    # An empty mesh's distances are infinite; JSON has no infinity, the table shows a blank.
    return {k: None if isinstance(figures[k], float) and not math.isfinite(figures[k]) else figures[k]
            for k in FIGURES if k in figures}


def row_summary(outcome: Outcome, folder: Path, record: dict[str, Any] | None) -> dict[str, Any]:
    row, record = outcome.row, record or {}
    seconds = record.get("seconds") or {}
    recorded = sum(float(seconds.get(k, 0.0)) for k in ("load_prior", "train", "finish"))
    out: dict[str, Any] = {
        "row": row.index, "folder": row.name, "prompt": row.prompt, "status": outcome.status,
        "skipped": outcome.skipped, "method": row.settings["method"], "representation": row.settings["representation"],
        "quality": row.settings["quality"], "seed": row.settings["seed"], "steps": row.settings["steps"],
        "seconds": round(recorded, 3) if outcome.status == JobStatus.FINISHED else None,
        "wall_seconds": None if outcome.wall_seconds is None else round(outcome.wall_seconds, 3),
        "worker": record.get("worker") or record.get("worker_pid"), "attempt": record.get("attempt", 1),
        "error": outcome.error if outcome.status != JobStatus.FINISHED else None, "figures": {},
    }
    if outcome.status == JobStatus.FINISHED:
        out["figures"] = _figures(folder, row.prompt, record)
    return out


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(summary: dict[str, Any]) -> str:
    head = ["row", "prompt", "method", "representation", "quality", "seed", "status", "seconds", *FIGURES]
    lines = [f"# Batch {summary['prompts']}", "",
             f"{summary['finished']} of {summary['rows']} rows finished, {summary['failed']} failed; executor "
             f"{summary['executor']}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["results"]:
        status = r["status"] + (" (earlier run)" if r["skipped"] else "")
        cells = [r["row"], r["prompt"], r["method"], r["representation"], r["quality"], r["seed"], status,
                 r["seconds"], *(r["figures"].get(k) for k in FIGURES)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    errors = [r for r in summary["results"] if r["error"]]
    if errors:
        lines += ["", "## Errors", ""] + [f"- row {r['row']} ({r['folder']}): {_cell(r['error'])}" for r in errors]
    return "\n".join(lines) + "\n"


def contact_sheet(results: list[dict[str, Any]], out: Path) -> bytes:
    """Each row's preview strip (finished rows) or a grey tile saying its status, labelled, one row each."""
    from PIL import Image, ImageDraw

    tiles = []
    for r in results:
        preview = out / r["folder"] / "preview.png"
        if r["status"] == JobStatus.FINISHED and preview.is_file():
            strip = Image.open(preview).convert("RGB")
            strip = strip.resize((max(1, strip.width * TILE_HEIGHT // strip.height), TILE_HEIGHT))
        else:
            strip = Image.new("RGB", (8 * TILE_HEIGHT, TILE_HEIGHT), (128, 128, 128))
            ImageDraw.Draw(strip).text((4, TILE_HEIGHT // 2 - 6), r["status"], fill=(255, 255, 255))
        iou = r["figures"].get("voxel_iou")
        label = f"{r['row']}. {r['prompt']} | {r['method']} {r['representation']} seed {r['seed']}" + (
            f" | IoU {iou:.2f}" if iou is not None else "")
        tile = Image.new("RGB", (strip.width, strip.height + LABEL_HEIGHT), (255, 255, 255))
        ImageDraw.Draw(tile).text((2, 1), label, fill=(0, 0, 0))
        tile.paste(strip, (0, LABEL_HEIGHT))
        tiles.append(tile)
    width = max([t.width for t in tiles] + [1])
    sheet = Image.new("RGB", (width, max(1, sum(t.height + 2 for t in tiles))), (255, 255, 255))
    y = 0
    for tile in tiles:
        sheet.paste(tile, (0, y))
        y += tile.height + 2
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def write_report(outcomes: list[Outcome], out: Path, prompts: Path, executor: str) -> dict[str, Any]:
    """summary.json, summary.md and contact_sheet.png in ``out``; returns the summary."""
    results = []
    for outcome in outcomes:
        folder = out / outcome.row.name
        results.append(row_summary(outcome, folder, records.read_record(folder)))
    summary = {"prompts": str(prompts), "executor": executor, "rows": len(results),
               "finished": sum(r["status"] == JobStatus.FINISHED for r in results),
               "failed": sum(r["status"] == JobStatus.FAILED for r in results), "results": results}
    write_json(out / "summary.json", summary)
    write_bytes(out / "summary.md", markdown(summary).encode())
    write_bytes(out / "contact_sheet.png", contact_sheet(results, out))
    return summary


__all__ = ["write_report", "row_summary", "markdown", "contact_sheet"]
