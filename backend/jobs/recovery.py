"""The jobs a restarted server takes up again, under the same ids.

A server killed (SIGKILL, a crash, the machine's power) leaves the records of its live jobs saying ``queued`` or
``running``. At start-up each is queued again, from the furthest point its folder allows:
- its own ``checkpoint.pt``: resumed from there, exactly (the runner saves one at the end of training, before
  the export, so a job killed while exporting re-runs only the export; one killed while training continues from
  its last periodic checkpoint, ``checkpoint_every``);
- no checkpoint: run again from its start (a refine from its source's checkpoint; a texture job from the mesh file
  its spec names), the same run with the same seed, since nothing it did was kept.
A texture job is resumed like a generated one: its checkpoint holds its mesh, UVs and fit besides the colour field,
optimiser, step and generator (``TexturedMesh.extra_state``, ``Trainer.save_checkpoint``), so it needs neither its
mesh file nor a fresh start. (It ran again from its start only while its checkpoint did not hold the mesh.)
``lost`` is left for a job that cannot be run again: its record lacks what a job needs, a refine's source
checkpoint or a texture job's mesh file is gone and it kept no checkpoint of its own, or it has already been
resumed ``MAX_RECOVERIES`` times (a job that kills its server each time must not do so forever). A job stopped on
purpose (cancelled, or ``interrupted`` by a server's orderly shutdown, whose client was told so) stays stopped: its
owner can refine it from its checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend import records
from backend.files import remove_leftovers
from backend.jobs.executor import JobSpec
from backend.jobs.results import ResultStore
from shared.status import JobStatus

log = logging.getLogger("backend.jobs")

MAX_RECOVERIES = 3
# What a record must hold to be run again (JobSpec's fields without defaults).
_NEEDED = ("job", "owner", "prompt", "settings", "stream", "created")


@dataclass
class Recovery:
    resumed: list[JobSpec] = field(default_factory=list)  # to queue again, oldest first
    lost: list[str] = field(default_factory=list)


def spec_of(record: dict[str, Any]) -> JobSpec | None:
    """The JobSpec a record was written from (backend/jobs/executor.py ``JobSpec.record``), or None."""
    if any(record.get(k) is None for k in _NEEDED) or not isinstance(record["settings"], dict) \
            or not isinstance(record["stream"], dict):
        return None
    return JobSpec(record["job"], record["owner"], record["prompt"], record["settings"], record["stream"],
                   record["created"], parent=record.get("parent"), source_checkpoint=record.get("source_checkpoint"),
                   refine_steps=int(record.get("refine_steps", 0)), recovered=int(record.get("recovered", 0)),
                   input_mesh=record.get("input_mesh"), reference_image=record.get("reference_image"))


def recover(store: ResultStore, live: dict[str, dict[str, Any]]) -> Recovery:
    """Queue again (record ``queued``) or record ``lost`` each live record ``store.load()`` found."""
    out = Recovery()
    for job_id, record in sorted(live.items(), key=lambda item: str(item[1].get("created") or "")):
        spec = spec_of(record)
        folder = store.job_dir(job_id)
        checkpoint = folder / records.CHECKPOINT_FILE
        why = None
        if spec is None or spec.id != job_id:
            why = "its record lacks what the job needs to run (" + ", ".join(_NEEDED) + ")"
        elif spec.recovered >= MAX_RECOVERIES:
            why = f"it was already resumed after {spec.recovered} server restarts"
        elif not checkpoint.is_file() and spec.source_checkpoint is not None \
                and not Path(spec.source_checkpoint).is_file():
            why = f"it refines a checkpoint that is gone ({spec.source_checkpoint}) and kept none of its own"
        elif spec.input_mesh is not None and not checkpoint.is_file() \
                and not (folder / spec.input_mesh).is_file():
            why = f"it textures a mesh whose file is gone ({spec.input_mesh})"
        elif spec.reference_image is not None and not (folder / spec.reference_image).is_file():
            why = f"its reference image is gone ({spec.reference_image})"
        if why is not None or spec is None:
            store.mark_lost(job_id, record, why or "")
            out.lost.append(job_id)
            continue
        spec.recovered += 1
        # A texture job's too: its checkpoint holds its mesh (JobSpec.plan resumes it rather than read the mesh file).
        if checkpoint.is_file():
            spec.resume_checkpoint = str(checkpoint.resolve())
        remove_leftovers(folder)  # a killed export's staging folder and temporary files
        store.write_record(job_id, spec.record(JobStatus.QUEUED, ended=None))
        out.resumed.append(spec)
    if out.resumed:
        log.warning("jobs a previous server left live are queued again: %s",
                    ", ".join(f"{s.id} ({'from its checkpoint' if s.resume_checkpoint else 'from the start'})"
                              for s in out.resumed))
    if out.lost:
        log.warning("jobs a previous server left live cannot be resumed and are marked lost: %s", ", ".join(out.lost))
    return out


__all__ = ["MAX_RECOVERIES", "Recovery", "recover", "spec_of"]
