"""Several jobs at once on one device (``--jobs-per-gpu``): the decision (backend/jobs/slots.py) from free memory,
a job's peak, MPS and the setting; the flag on serve and batch; and a real server with two worker processes
running two jobs side by side."""

from __future__ import annotations

import json
import os

import pytest

from backend.cli import build_parser, ray_options
from backend.jobs import slots
from backend.jobs.slots import GIB, JOB_PEAK_BYTES, MPS_MAX_JOBS, NO_MPS_MAX_JOBS, choose, mps_running, parse_setting
from server_support import LONG, QUIET_STREAM, ServerProcess, client, submit, wait_for
from shared.settings import SettingsError


# --- the decision ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("free_gib, mps, jobs", [
    (139, True, 13),   # an idle H200 under MPS: memory decides
    (139, False, NO_MPS_MAX_JOBS),  # the same GPU time-sliced: the cap decides
    (25, True, 2),
    (25, False, 2),
    (15, True, 1),     # less than two jobs' peak
    (3, True, 1),      # less than one job's: still one (it may fit; its record says if it did not)
    (10_000, True, MPS_MAX_JOBS),  # MPS's client limit
])
def test_auto_on_cuda_divides_free_memory_by_a_jobs_peak_and_caps_it(free_gib, mps, jobs):
    chosen = choose("auto", "cuda", free_gib * GIB, mps)
    assert chosen.jobs == jobs, chosen.why
    assert f"{free_gib:.1f} GiB free" in chosen.why


def test_auto_is_one_on_the_cpu_or_when_free_memory_is_unknown():
    assert choose("auto", "cpu", None, False).jobs == 1
    assert choose("auto", "cpu", 500 * GIB, True).jobs == 1
    assert choose("auto", "cuda", None, True).jobs == 1


def test_a_number_given_is_kept_whatever_the_device():
    assert choose(3, "cpu", None, False).jobs == 3
    assert choose(8, "cuda", 1 * GIB, False).jobs == 8  # the operator's call: asked for, so it runs
    assert JOB_PEAK_BYTES == 10 * GIB


@pytest.mark.parametrize("text, value", [("auto", "auto"), ("1", 1), ("12", 12)])
def test_setting_parses_a_count_or_auto(text, value):
    assert parse_setting(text) == value


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5", ""])
def test_setting_refuses_anything_else(text):
    with pytest.raises(ValueError):
        parse_setting(text)


def test_mps_is_seen_by_its_control_pipe(tmp_path):
    pipes = tmp_path / "mps"
    pipes.mkdir()
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(pipes)}
    assert not mps_running(env)  # the folder alone is what a stopped daemon leaves
    os.mkfifo(pipes / "control")
    assert mps_running(env)


def test_resolve_on_the_cpu_starts_no_probe():
    assert slots.resolve("auto", "cpu").jobs == 1
    assert slots.resolve(2, "cpu").jobs == 2


# --- the flag -------------------------------------------------------------------------------------------------

def test_serve_and_batch_take_jobs_per_gpu_and_batch_keeps_workers_as_its_alias():
    parser = build_parser()
    assert parser.parse_args(["serve"]).jobs_per_gpu == "auto"
    assert parser.parse_args(["serve", "--jobs-per-gpu", "4"]).jobs_per_gpu == 4
    assert parser.parse_args(["batch", "p.txt", "--out", "o"]).jobs_per_gpu == "auto"
    assert parser.parse_args(["batch", "p.txt", "--out", "o", "--workers", "3"]).jobs_per_gpu == 3
    assert parser.parse_args(["batch", "p.txt", "--out", "o", "--jobs-per-gpu", "auto"]).jobs_per_gpu == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--jobs-per-gpu", "0"])


def test_on_ray_jobs_per_gpu_is_actors_per_gpu():
    parser = build_parser()
    assert ray_options(parser.parse_args(["serve", "--executor", "ray"]))["gpus_per_actor"] == 1.0
    assert ray_options(parser.parse_args(["serve", "--executor", "ray", "--jobs-per-gpu", "4"]))["gpus_per_actor"] == 0.25
    both = parser.parse_args(["serve", "--executor", "ray", "--jobs-per-gpu", "2", "--ray-gpus-per-actor", "0.5"])
    with pytest.raises(SettingsError, match="give one of them"):
        ray_options(both)
    assert ray_options(parser.parse_args(["serve"])) is None


# --- a real server ----------------------------------------------------------------------------------------------

def test_a_server_with_two_job_slots_runs_two_jobs_at_the_same_time(tmp_path):
    """Two long jobs: both start, and both advance, before either ends; with one slot the second would wait in
    the queue until the first ended, and this test would time out waiting for its start."""
    with ServerProcess(tmp_path / "results", extra=["--jobs-per-gpu", "2"]) as server:
        c = client(server, hello=False)
        c.send_hello(name="pytest")
        assert wait_for(c, lambda m: m.type == "welcome", 10)["capabilities"]["job_slots"] == 2
        jobs = [submit(c, prompt, LONG, QUIET_STREAM).job for prompt in ("a red cube", "a blue sphere")]
        try:
            seen: list = []
            steps = {job: 0 for job in jobs}

            def both_advancing(m) -> bool:
                assert not (m.job in jobs and m.type in ("finished", "cancelled", "error")), m.header
                if m.job in jobs and m.type == "progress":
                    steps[m.job] = max(steps[m.job], m["step"])
                return min(steps.values()) >= 5

            # Two workers import torch and build their first jobs on this 2-core machine: allow a while.
            wait_for(c, both_advancing, 180, seen)
            started = [m.job for m in seen if m.type == "started"]
            assert sorted(started) == sorted(jobs)
            # Still both advancing later on, in two processes.
            wait_for(c, lambda m: m.type == "progress" and m.job == jobs[0] and m["step"] >= steps[jobs[0]] + 5, 60)
            wait_for(c, lambda m: m.type == "progress" and m.job == jobs[1] and m["step"] >= steps[jobs[1]] + 5, 60)
        finally:
            for job in jobs:
                c.send_cancel(job)
        ended: set[str] = set()

        def all_cancelled(m) -> bool:
            if m.type == "cancelled" and m.job in jobs:
                ended.add(m.job)
            return len(ended) == len(jobs)

        wait_for(c, all_cancelled, 60)
        pids = {json.loads((server.results / job / "job.json").read_text())["worker_pid"] for job in jobs}
        assert len(pids) == 2
        c.close()
