"""Jobs on real Ray actors (backend/jobs/ray_executor.py): one local Ray instance for the module with two
logical GPUs on this CPU machine (the actors run on device cpu), joined by `batch` and `serve` subprocesses
through its address, as a second host would join a cluster.

What this cannot show here: real GPUs (CUDA_VISIBLE_DEVICES per actor), a second host, a lost node; see
docs/SCALE.md.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from server_support import QUIET_STREAM, ROOT, TINY, ServerProcess, client, run_to_end, submit, wait_for

ray = pytest.importorskip("ray", reason="Ray is the [ray] extra; build.py test installs it")

from backend.export.meshfile import read_glb  # noqa: E402
from backend.jobs.ray_executor import RAY_NAMESPACE  # noqa: E402

# Few steps, tiny meshes: a job is seconds on a CPU. Preview strips on, so preview.png compares too.
FAST = ["--quality", "draft", "--steps", "4", "--gaussian-points", "100", "--camera-bank-size", "4",
        "--mesh-resolution", "32", "--texture-size", "64", "--procedural-resolution", "32"]
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def cluster():
    """A Ray instance shared by the module's tests (starting one costs seconds): 2 CPUs, 2 logical GPUs."""
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, namespace=RAY_NAMESPACE)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _batch(prompts: Path, out: Path, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend", "batch", str(prompts), "--out", str(out), "--device", "cpu",
                           *FAST, *extra], cwd=ROOT, env=dict(os.environ, **ENV), capture_output=True, text=True,
                          timeout=timeout)


def _prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "representation", "seed", "method"])
        writer.writerow(["a red cube", "gaussians", "3", "tbsd"])
        writer.writerow(["a blue sphere", "gaussians", "7", "sds"])
        writer.writerow(["a green torus", "nerf", "1", "tbsd"])
    return path


def test_batch_on_ray_writes_every_row_like_the_local_executor_and_a_rerun_skips_them(cluster, tmp_path):
    prompts = _prompts(tmp_path)
    on_ray = _batch(prompts, tmp_path / "ray", "--executor", "ray", "--ray-address", cluster)
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    assert re.search(r"\d\d:\d\d<\d\d:\d\d", on_ray.stderr)  # the bar's elapsed<remaining (the ETA)
    local = _batch(prompts, tmp_path / "local", "--executor", "local", "--workers", "2")
    assert local.returncode == 0, local.stderr[-3000:]

    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert [r["status"] for r in summary["results"]] == ["finished"] * 3
    # Two actors, three rows: an actor ran two, and loaded the prior only for its first (kept warm).
    records = [json.loads((tmp_path / "ray" / r["folder"] / "job.json").read_text()) for r in summary["results"]]
    loads = {(r["worker"], r["prior_loaded"]) for r in records}
    assert sum(r["prior_loaded"] for r in records) == len({r["worker"] for r in records}) < 3, loads
    assert (tmp_path / "ray" / "summary.md").read_text().count("| finished |") == 3
    assert (tmp_path / "ray" / "contact_sheet.png").stat().st_size > 0
    for row in summary["results"]:
        ray_dir, local_dir = tmp_path / "ray" / row["folder"], tmp_path / "local" / row["folder"]
        ray_record = json.loads((ray_dir / "job.json").read_text())
        local_record = json.loads((local_dir / "job.json").read_text())
        assert ray_record["status"] == "finished" and all((ray_dir / f).is_file() for f in ray_record["all_files"])
        assert ray_record["worker"].startswith("tbsd-") and "worker" not in local_record
        # Same seed, same code, same thread count: the same mesh, bit for bit, and the same figures.
        ours, theirs = read_glb(ray_dir / "mesh.glb"), read_glb(local_dir / "mesh.glb")
        for name in theirs:
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=f"{row['folder']} {name}")
        assert ray_record["figures"] == local_record["figures"]
        assert ray_record["mesh"] == local_record["mesh"]
        assert (ray_dir / "preview.png").read_bytes() == (local_dir / "preview.png").read_bytes()
        assert row["figures"]["voxel_iou"] >= 0.0 and row["seconds"] > 0

    # A finished row is not run again; an edited row (another seed) and a row whose file went missing are.
    mtime = (tmp_path / "ray" / "0001-a-red-cube" / "job.json").stat().st_mtime_ns
    (tmp_path / "ray" / "0003-a-green-torus" / "mesh.ply").unlink()
    rows = prompts.read_text().replace("a blue sphere,gaussians,7", "a blue sphere,gaussians,8")
    prompts.write_text(rows)
    again = _batch(prompts, tmp_path / "ray", "--executor", "ray", "--ray-address", cluster)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 of 3 rows to run" in again.stderr
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert [r["skipped"] for r in summary["results"]] == [True, False, False]
    assert (tmp_path / "ray" / "0001-a-red-cube" / "job.json").stat().st_mtime_ns == mtime
    assert json.loads((tmp_path / "ray" / "0002-a-blue-sphere" / "job.json").read_text())["settings"]["seed"] == 8


def _record(server: ServerProcess, job: str) -> dict:
    try:
        return json.loads((server.results / job / "job.json").read_text())
    except (OSError, ValueError):
        return {}


def _kill_actor_of(server: ServerProcess, job: str, attempt: int) -> str:
    """ray.kill the actor running ``job``'s ``attempt`` once its record names it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        record = _record(server, job)
        if record.get("status") == "running" and record.get("attempt", 1) == attempt:
            ray.kill(ray.get_actor(record["worker"], namespace=RAY_NAMESPACE))
            return record["worker"]
        time.sleep(0.05)
    raise AssertionError(f"job {job} attempt {attempt} never ran: {_record(server, job)}\n{server.log()[-3000:]}")


def test_server_on_ray_runs_jobs_side_by_side_and_a_killed_actor_costs_only_its_job(cluster, tmp_path):
    with ServerProcess(tmp_path / "results", extra=["--executor", "ray", "--ray-address", cluster]) as server:
        c = client(server, "ray")
        slow = submit(c, "a red cube", {**TINY, "steps": 200, "preview_every": 0}).job
        quick = submit(c, "a blue sphere", TINY, QUIET_STREAM).job
        seen: list = []
        # Both run at once on the two actors: the quick one finishes while the slow one is still going.
        wait_for(c, lambda m: m.job == quick and m.type == "finished", 120, seen)
        assert not any(m.job == slow and m.type in ("finished", "error") for m in seen)
        assert _record(server, quick)["worker"] != _record(server, slow).get("worker")

        # First death: the job runs again from the start on a fresh actor (one retry).
        first = _kill_actor_of(server, slow, attempt=1)
        retry = wait_for(c, lambda m: m.job == slow and m.type == "error", 60, seen)
        assert retry["code"] == "job_retry" and not retry["fatal"] and "attempt 2 of 2" in retry["message"]
        wait_for(c, lambda m: m.job == slow and m.type == "started", 60, seen)
        # Second death: out of retries, the job fails cleanly with a record that says why.
        second = _kill_actor_of(server, slow, attempt=2)
        assert second != first
        failed = wait_for(c, lambda m: m.job == slow and m.type == "error", 60, seen)
        assert failed["code"] == "job_failed" and failed["fatal"] and "Ray actor died" in failed["message"]
        record = _record(server, slow)
        assert record["status"] == "failed" and record["attempts"] == 2
        assert not (server.results / slow / "mesh.glb").exists()

        # The next jobs still run, on replaced actors, and stream as they do locally.
        after = submit(c, "a green cone", TINY, {**QUIET_STREAM, "mesh_every": 4}).job
        messages = run_to_end(c, after, 120)
        kinds = [m.type for m in messages]
        assert kinds[-1] == "finished" and "progress" in kinds and "preview" in kinds
        meshes = [m for m in messages if m.type == "mesh"]
        assert meshes and meshes[-1]["final"]
        on_disk = read_glb(server.results / after / "mesh.glb")
        np.testing.assert_array_equal(meshes[-1].arrays["vertices"], on_disk["vertices"])
        assert _record(server, after)["worker"] not in (first, second)
        c.close()


def test_without_ray_the_executor_says_how_to_install(tmp_path):
    code = ("import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed
            "from backend.cli import main\n"
            f"sys.exit(main(['batch', {str(_prompts(tmp_path))!r}, '--out', {str(tmp_path / 'out')!r}, "
            "'--executor', 'ray']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "needs Ray" in proc.stderr and "pip install 'tbsd-studio[ray]'" in proc.stderr
