"""The server against hostile clients, dying workers and killed servers: real `python -m backend serve`
processes (one per test where a test disturbs its server), real zmq sockets, worker faults injected through
environment variables only a test sets (backend/jobs/worker.py, backend/files.py).

What was not run here: a real CUDA out-of-memory on a GPU. The worker raises torch.cuda.OutOfMemoryError on
the CPU through its test hook, which exercises the same handling (the exception type, the record, the restart).
"""

from __future__ import annotations

import collections
import json
import os
import random
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from server_support import (LONG, QUIET_STREAM, ROOT, TINY, ServerProcess, client, drain, free_port,
                            mutated_messages, run_to_end, submit, wait_for)
from shared import protocol as P
from shared.client import Client

# The least job that still writes every file of a job's end.
MINI = {**TINY, "steps": 2, "preview_every": 0}


def _worker_pids(server: ServerProcess) -> list[int]:
    assert server.proc is not None
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    return [int(p) for p in children]


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _ask(c: Client, rid: str, timeout: float = 20) -> P.Message:
    return wait_for(c, lambda m: m.get("id") == rid, timeout)


def _listed(c: Client) -> dict[str, dict]:
    return {r["job"]: r for r in _ask(c, c.send_list())["results"]}


# --- identity ---------------------------------------------------------------------------------------------------

def test_a_hello_less_clients_jobs_stay_its_own_before_and_after_a_restart(tmp_path):
    results, port = tmp_path / "results", free_port()
    with ServerProcess(results, port) as s:
        anon = client(s, hello=False)
        job = submit(anon, settings=MINI).job
        assert run_to_end(anon, job)[-1].type == "finished"
        other = client(s, "other")
        for send in (lambda: other.send_cancel(job), lambda: other.send_fetch(job), lambda: other.send_refine(job)):
            err = _ask(other, send())
            assert err.type == "error" and err["code"] == "unknown_job", err.header
        assert job not in _listed(other)
        # Tokens are issued, never chosen: the old "conn-<routing id>" trick and made-up tokens are refused.
        for forged in ("conn-00" + "a" * 8, "streamer", "A" * 44):
            forger = Client(s.endpoint)
            err = _ask(forger, forger.send("hello", client=forged))
            assert err.type == "error" and err["code"] == "unknown_client" and "issued" in err["message"]
            forger.close()
        # A peer that picks its own routing id (it could pick a departed client's) is refused.
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.setsockopt(zmq.ROUTING_ID, b"\x01victim")
        raw.connect(s.endpoint)
        raw.send_multipart(P.encode({"type": "list", "id": "x1"}))
        assert raw.poll(10_000)
        reply = P.decode(raw.recv_multipart())
        assert reply["code"] == "bad_field" and "routing id" in reply["message"]
        raw.close()
        anon.close()
        other.close()
    with ServerProcess(results, port) as s2:
        for name in ("other", None):
            c = client(s2, name)
            assert job not in _listed(c)
            err = _ask(c, c.send_fetch(job))
            assert err["code"] == "unknown_job"
            c.close()
        # The record on disk is owned by a random identity, not by anything derived from the connection.
        owner = json.loads((results / job / "job.json").read_text())["owner"]
        assert owner.startswith("anon-") and len(owner) > 30


def test_one_connection_cannot_take_more_than_its_share_of_the_queue(tmp_path):
    with ServerProcess(tmp_path / "results") as s:
        runner = client(s, "runner")
        long_job = submit(runner, settings=LONG).job
        wait_for(runner, lambda m: m.type == "started", 60)
        greedy = Client(s.endpoint)
        accepted, refused = [], []
        for i in range(P.MAX_QUEUED_PER_CONNECTION + 6):
            greedy.client_id = None  # a fresh identity for every job
            assert _ask(greedy, greedy.send_hello()).type == "welcome"
            reply = _ask(greedy, greedy.send_submit("a red cube", MINI, QUIET_STREAM))
            (accepted if reply.type == "accepted" else refused).append(reply)
        assert len(accepted) == P.MAX_QUEUED_PER_CONNECTION
        assert refused and all(r["code"] == "queue_full" and "connection" in r["message"] for r in refused)
        # Another client still gets in.
        assert submit(client(s, "latecomer"), settings=MINI).type == "accepted"
        runner.send_cancel(long_job)
        greedy.close()


# --- workers ----------------------------------------------------------------------------------------------------

def _server_with_worker_faults(tmp_path: Path, faults: str, *extra: str) -> ServerProcess:
    """A server whose workers take the faults ``faults`` (worker.py's test hook: each claimed by one job)."""
    folder = tmp_path / "faults"
    folder.mkdir()
    return ServerProcess(tmp_path / "results", extra=list(extra)).start(
        env={"TBSD_TEST_WORKER_FAULTS": faults, "TBSD_TEST_FAULT_DIR": str(folder)})


def test_a_worker_whose_server_died_while_it_started_exits_instead_of_waiting_forever(tmp_path):
    """A server killed while its new worker is still importing (before the worker asks the kernel to kill it with
    its parent) left the worker reparented, waiting for jobs forever. It must see its parent is not the server
    that started it and exit."""
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid whose process is over, as a dead server's is
    proc = subprocess.run([sys.executable, "-m", "backend.jobs.worker", f"ipc://{tmp_path}/none.sock", "worker-1",
                           str(tmp_path / "results"), "cpu", str(gone.pid)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)  # a worker that stays raises TimeoutExpired here
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_worker_that_runs_out_of_gpu_memory_segfaults_hangs_or_is_killed_fails_only_its_job(tmp_path):
    s = _server_with_worker_faults(tmp_path, "oom@2,segv@2,hang@2", "--job-silence-timeout", "8")
    try:
        c = client(s, "victim")
        pinger = client(s, "pinger")
        expected = {"oom": "GPU out of memory", "segv": "segmentation fault", "hang": "sent nothing for 8 s"}
        workers = set()
        for kind, words in expected.items():
            job = submit(c, settings=LONG).job
            t0 = time.monotonic()
            err = wait_for(c, lambda m: m.job == job and m.type == "error" and m.get("fatal"), 120)
            assert err["code"] == "job_failed" and words in err["message"], err.header
            record = json.loads((s.results / job / "job.json").read_text())
            assert record["status"] == "failed" and words in record["error"] and record["owner"]
            assert _listed(c)[job]["status"] == "failed" and not _listed(c)[job]["has_mesh"]
            workers.update(_worker_pids(s))
            # The server itself never stopped answering.
            assert _ask(pinger, pinger.send_ping(), 5).type == "pong", time.monotonic() - t0
        # SIGKILL from outside, mid-job.
        job = submit(c, settings=LONG).job
        wait_for(c, lambda m: m.job == job and m.type == "progress" and m["step"] >= 2, 120)
        (pid,) = _worker_pids(s)
        os.kill(pid, signal.SIGKILL)
        err = wait_for(c, lambda m: m.job == job and m.type == "error" and m.get("fatal"), 30)
        assert "SIGKILL" in err["message"] and job in err["message"], err.header
        assert json.loads((s.results / job / "job.json").read_text())["status"] == "failed"
        # The next job runs in a fresh worker and succeeds.
        job = submit(c, settings=MINI).job
        assert run_to_end(c, job, 180)[-1].type == "finished"
        (fresh,) = _worker_pids(s)
        assert fresh != pid and len(workers | {fresh}) >= 3  # oom and segv replaced their workers too
        assert s.proc is not None and s.proc.poll() is None
        c.close()
        pinger.close()
    finally:
        s.stop()


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU (a real allocator OOM)")
def test_a_real_cuda_out_of_memory_fails_only_its_job_and_the_next_job_runs(tmp_path):
    s = _server_with_worker_faults(tmp_path, "cuda_oom@2", "--device", "cuda")
    try:
        c = client(s, "gpu")
        job = submit(c, settings=LONG).job
        err = wait_for(c, lambda m: m.job == job and m.type == "error" and m.get("fatal"), 300)
        assert err["code"] == "job_failed" and "GPU out of memory" in err["message"], err.header
        assert json.loads((s.results / job / "job.json").read_text())["status"] == "failed"
        job = submit(c, settings=MINI).job
        assert run_to_end(c, job, 300)[-1].type == "finished"
        c.close()
    finally:
        s.stop()


def test_pings_stay_under_100ms_while_a_job_exports_at_mesh_resolution_256(tmp_path):
    with ServerProcess(tmp_path / "results") as s:
        c = client(s, "exporter")
        pinger = Client(s.endpoint)
        job = submit(c, settings={**MINI, "mesh_resolution": 256, "texture_size": 512}).job
        rtts: list[float] = []
        done = None
        deadline = time.monotonic() + 300
        while done is None and time.monotonic() < deadline:
            t0 = time.perf_counter()
            rid = pinger.send("ping", t=0)
            wait_for(pinger, lambda m: m.get("id") == rid, 10)
            rtts.append(time.perf_counter() - t0)
            for m in drain(c):
                if m.job == job and m.type in ("finished", "error"):
                    done = m
            time.sleep(0.02)
        assert done is not None and done.type == "finished", done and done.header
        record = json.loads((s.results / job / "job.json").read_text())
        export = record["seconds"]["extract"] + record["seconds"]["export"]
        assert record["mesh"]["resolution"] == 256 and export > 1.0, record["seconds"]
        assert len(rtts) > 20 and max(rtts) < 0.100, (max(rtts), np.percentile(rtts, 99), export)
        c.close()
        pinger.close()


# Runs before anything else in every Python process of the server under test; only the worker's command line
# waits, while the gate file exists: the worker is spawned but cannot say _ready until the test removes it.
_HOLD_WORKER = """
import os, sys, time
gate = os.environ.get("TBSD_TEST_WORKER_GATE")
if gate and "backend.jobs.worker" in sys.orig_argv:
    open(gate + ".held", "w").close()
    while os.path.exists(gate):
        time.sleep(0.05)
"""


def test_a_job_cancelled_before_its_worker_is_ready_is_recorded_cancelled_and_the_next_job_runs(tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_HOLD_WORKER)
    gate, held = tmp_path / "worker-gate", tmp_path / "worker-gate.held"
    gate.touch()
    results, port = tmp_path / "results", free_port()
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    s = ServerProcess(results, port).start(env={"PYTHONPATH": path, "TBSD_TEST_WORKER_GATE": str(gate)})
    try:
        deadline = time.monotonic() + 30
        while not held.exists():
            assert time.monotonic() < deadline, "the worker never reached the gate:\n" + s.log()
            time.sleep(0.05)
        c = client(s, "early")
        # The server hands the job to the executor at once; the executor keeps it until the worker is ready.
        job = submit(c, settings=MINI).job
        c.send_cancel(job)
        cancelled = wait_for(c, lambda m: m.job == job and m.type == "cancelled", 30)
        assert cancelled["step"] == 0 and cancelled["reason"] == "cancel", cancelled.header
        assert gate.exists() and _worker_pids(s)  # the worker was held, alive and not ready, throughout
        record = json.loads((results / job / "job.json").read_text())
        assert record["status"] == "cancelled" and record["stop_reason"] == "cancel", record
        assert record["steps_done"] == 0 and record["ended"], record
        assert _listed(c)[job]["status"] == "cancelled"
        gate.unlink()
        after = submit(c, settings=MINI).job
        assert run_to_end(c, after, 180)[-1].type == "finished"
        assert _listed(c)[job]["status"] == "cancelled"
        c.close()
    finally:
        s.stop()
    # A restarted server reads the record as written: cancelled, not lost.
    with ServerProcess(results, port) as s:
        c = client(s, "early")
        listed = _listed(c)
        assert listed[job]["status"] == "cancelled" and listed[after]["status"] == "finished", listed
        c.close()


# --- files ------------------------------------------------------------------------------------------------------

class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_checkpoint_runs_no_code(tmp_path):
    from backend.train import load_checkpoint

    marker = tmp_path / "pwned"
    planted = tmp_path / "checkpoint.pt"
    import torch

    torch.save({"format": 2, "settings": _Exploit(marker)}, planted)
    with pytest.raises(ValueError, match="refused"):
        load_checkpoint(planted)
    assert not marker.exists()
    with ServerProcess(tmp_path / "results") as s:
        c = client(s, "victim")
        job = submit(c, settings=MINI).job
        assert run_to_end(c, job)[-1].type == "finished"
        (s.results / job / "checkpoint.pt").write_bytes(planted.read_bytes())
        refine = _ask(c, c.send_refine(job, settings={"steps": 2}, stream=QUIET_STREAM))
        err = wait_for(c, lambda m: m.job == refine.job and m.type == "error", 120)
        assert err["code"] == "job_failed" and "refused" in err["message"], err.header
        assert not marker.exists()
        c.close()


def _finished_after_restart(c: Client, job: str, timeout: float = 120) -> dict:
    """``job``'s listing once a restarted server has finished it (polled: it may finish before this client's
    hello, and then its events went to nobody)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        summary = _listed(c)[job]  # never vanished
        assert summary["status"] in ("queued", "running", "finished"), summary
        if summary["status"] == "finished":
            return summary
        time.sleep(0.5)
    raise AssertionError(f"job {job} did not finish within {timeout} s after the restart: {summary}")


def _check_finished_folder(c: Client, folder: Path, job: str) -> dict:
    record = json.loads((folder / "job.json").read_text())  # never torn
    assert record["status"] == "finished" and record["owner"], record
    for name in record["all_files"]:
        assert (folder / name).stat().st_size > 0, name
    assert not list(folder.glob(".*")), list(folder.iterdir())  # no torn leftovers
    result = _ask(c, c.send_fetch(job))
    assert result.type == "result" and len(result.arrays["faces"]) > 0
    assert result.arrays["faces"].max() < len(result.arrays["vertices"])
    return record


def test_a_server_killed_at_each_write_of_a_job_finishes_it_after_a_restart(tmp_path):
    """The worker SIGKILLs the server (and, through PDEATHSIG, itself) just before its N-th file rename, for
    N = 1, 2, ... until a job finishes with no kill, then just after the last rename (job.json): every state a
    crash can leave is visited. The restarted server must take the job up again under its id and finish it with
    every file: from the start while it had no checkpoint (kill before write 2), else from the checkpoint saved
    before the export, re-running only the export."""
    results, port = tmp_path / "results", free_port()
    outcomes: dict[str, str] = {}
    points = [str(n) for n in range(1, 16)]
    s = ServerProcess(results, port).start(env={"TBSD_TEST_KILL_AT_PUBLISH": points[0]})
    try:
        while points:
            point = points.pop(0)
            c = client(s, "writer")
            job = submit(c, settings=MINI).job
            deadline = time.monotonic() + 180
            finished = False
            while s.proc.poll() is None and time.monotonic() < deadline and not finished:
                finished = any(m.job == job and m.type == "finished" for m in drain(c, 100))
            c.close()
            if finished:  # past the last write: now kill just after it instead
                assert "+" not in point, outcomes
                outcomes[point] = "no kill"
                points = [f"{int(point) - 1}+"]
            else:
                assert s.proc.poll() == -signal.SIGKILL, f"write {point}: server exited {s.proc.poll()}"
            s.stop()
            at_kill = json.loads((results / job / "job.json").read_text())["status"]
            # The next point applies to the next job's first run; this one's resumption runs to its end.
            s = ServerProcess(results, port).start(env={"TBSD_TEST_KILL_AT_PUBLISH": points[0]} if points else None)
            if finished:
                continue
            c = client(s, "writer")
            _finished_after_restart(c, job)
            record = _check_finished_folder(c, results / job, job)
            if at_kill == "finished":  # killed just after job.json: nothing to resume
                assert point.endswith("+") and not points and "recovered" not in record, (point, record)
            else:
                assert record["recovered"] == 1, (point, record)
                resumed = int(point.rstrip("+")) >= 3 or point == "2+"  # the checkpoint is write 2
                assert ("resumed_at_step" in record) == resumed, (point, record)
                if resumed:
                    assert record["resumed_at_step"] == record["steps_done"] == MINI["steps"], (point, record)
            outcomes[point] = record["status"]
            c.close()
    finally:
        s.stop()
    # Before each of the nine writes (running record, checkpoint, six mesh and preview files, job.json) and just
    # after job.json: finished, though the client never heard "finished" from the server that was killed.
    killed = [p for p in outcomes if outcomes[p] != "no kill"]
    assert len(killed) >= 10 and all(outcomes[p] == "finished" for p in killed), outcomes


def test_jobs_killed_queued_training_and_exporting_continue_under_their_ids_after_restarts(tmp_path):
    """SIGKILL of the server with one job training (after its checkpoint at step 20) and two queued; restarted,
    the first resumes at step 20 and the server is SIGKILLed again in the middle of its export; restarted again,
    it re-runs only its export and the two queued jobs run: all three finish, with valid meshes, under the ids the
    client was given, and the client hears them finish."""
    results, port = tmp_path / "results", free_port()
    long = {**TINY, "steps": 30, "checkpoint_every": 10, "preview_every": 0}
    # First run: killed just after the checkpoint at step 20 (writes: running record, step 10, step 20). First
    # resumption: killed before the second file of its export (running record, step 30, the final checkpoint,
    # then mesh files).
    s = ServerProcess(results, port).start(env={"TBSD_TEST_KILL_AT_PUBLISH": "3+,5@1"})
    try:
        c = client(s, "artist")
        first = submit(c, settings=long).job
        queued = [submit(c, prompt=p, settings=MINI).job for p in ("a blue sphere", "a green torus")]
        assert s.wait(120) == -signal.SIGKILL, s.log()[-3000:]
        c.close()
        assert (results / first / "checkpoint.pt").is_file()
        s.stop()

        s = ServerProcess(results, port).start(env={"TBSD_TEST_KILL_AT_PUBLISH": "5@1"})
        c = client(s, "artist")
        listed = _listed(c)
        assert {listed[j]["status"] for j in [first, *queued]} <= {"queued", "running"}, listed
        started = wait_for(c, lambda m: m.job == first and m.type == "started", 60)
        assert started["step"] == 20 and started["total"] == 30, started.header
        assert s.wait(120) == -signal.SIGKILL, s.log()[-3000:]
        c.close()
        s.stop()

        s = ServerProcess(results, port).start()
        c = client(s, "artist")
        seen: list[P.Message] = []
        for job in [first, *queued]:
            wait_for(c, lambda m, job=job: m.job == job and m.type in ("finished", "error"), 120, seen)
        assert [m.job for m in seen if m.type == "finished"] == [first, *queued], [m.header for m in seen]
        assert not [m for m in seen if m.type == "error"], [m.header for m in seen]
        resumed = next(m for m in seen if m.job == first and m.type == "started")
        assert resumed["step"] == resumed["total"] == 30  # only the export ran again
        assert not [m for m in seen if m.job == first and m.type == "progress"]
        for job in [first, *queued]:
            record = _check_finished_folder(c, results / job, job)
            assert record["recovered"] == 2, record
        assert _listed(c)[first]["steps_done"] == 30
        c.close()
    finally:
        s.stop()


# --- malformed messages -----------------------------------------------------------------------------------------

# Job events and the replies to the fuzz's own cancels arrive between the replies it waits for; not replies.
_JOB_EVENTS = ("started", "progress", "preview", "mesh", "finished", "cancelled")


def _raw_socket(server: ServerProcess) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    return sock


def _reply(sock: zmq.Socket, timeout: float = 10) -> P.Message:
    """The next reply to a request on ``sock``: heartbeats, job events and answers to "fuzzcancel" skipped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sock.poll(100):
            continue
        m = P.decode(sock.recv_multipart())
        if m.type == "heartbeat" or m.get("id") == "fuzzcancel" or m.type in _JOB_EVENTS \
                or (m.type == "error" and m.get("job") is not None):
            continue
        return m
    raise AssertionError(f"no reply within {timeout} s")


# Array descriptors numpy cannot build or no message could carry, with the words their error must hold: what
# is wrong and what is allowed.
ABSURD_ARRAYS = [
    ({"dtype": "uint8", "shape": [0, 10**30]}, b"",
     "shape [0, 1000000000000000000000000000000] is too large: its non-zero dimensions multiply to "
     "1000000000000000000000000000000 uint8 items; at most 16777216 fit"),
    ({"dtype": "float32", "shape": [2**62, 0]}, b"", "is too large: its non-zero dimensions multiply to "
                                                     "4611686018427387904 float32 items; at most 4194304 fit"),
    ({"dtype": "int32", "shape": [0, 2**40, 2**40]}, b"", "too large"),
    ({"dtype": "uint8", "shape": [0, -5]}, b"", "dimension 1 is -5; each dimension must be a non-negative integer"),
    ({"dtype": "uint8", "shape": [2, 1.5]}, b"\0\0\0", "dimension 1 is 1.5; each dimension must be"),
    ({"dtype": "uint8", "shape": ["3"]}, b"\0\0\0", "dimension 0 is '3'; each dimension must be"),
    ({"dtype": "uint8", "shape": [1, 1, 1, 1, 1]}, b"\0", "shape has 5 dimensions; at most 4 are allowed"),
    ({"dtype": "float64", "shape": [1]}, b"\0" * 8, "dtype 'float64'; allowed: uint8, int32"),
    ({"dtype": "object", "shape": [0]}, b"", "dtype 'object'; allowed"),
]


def test_absurd_array_shapes_and_dtypes_get_bad_field_naming_them_and_the_server_keeps_serving(tmp_path):
    with ServerProcess(tmp_path / "results") as s:
        sock = _raw_socket(s)
        for i, (descriptor, frame, words) in enumerate(ABSURD_ARRAYS):
            head = {"v": 1, "type": "ping", "id": f"a{i}", "t": 1.0, "arrays": [{"name": "a", **descriptor}]}
            sock.send_multipart([json.dumps(head).encode(), frame])
            reply = _reply(sock)
            assert reply.type == "error" and reply["code"] == "bad_field" and reply.get("id") == f"a{i}", reply.header
            assert words in reply["message"], reply["message"]
        sock.send_multipart(P.encode({"type": "ping", "id": "after", "t": 1.0}))
        assert _reply(sock).type == "pong"
        sock.close()
        assert "handler failed" not in s.log(), s.log()[-3000:]


def test_ten_thousand_mutated_messages_get_no_internal_error_then_a_job_finishes(tmp_path):
    cases = mutated_messages(random.Random(2007), 10_000)
    with ServerProcess(tmp_path / "results") as s:
        sock = _raw_socket(s)
        answers: collections.Counter[str] = collections.Counter()
        for i, frames in enumerate(cases):
            sock.send_multipart(frames)
            reply = _reply(sock)
            answers[reply["code"] if reply.type == "error" else reply.type] += 1
            assert not (reply.type == "error" and reply["code"] == "internal"), (i, frames[0][:300], reply.header)
            assert reply.type != "shutting_down", (i, frames[0][:300])
            if reply.type == "accepted":  # a mutation that stayed a valid submit: keep the worker free
                sock.send_multipart(P.encode({"type": "cancel", "id": "fuzzcancel", "job": reply["job"]}))
        sock.close()
        assert answers["internal"] == 0 and sum(answers.values()) == len(cases), answers
        assert answers["bad_field"] > 1000 and answers["malformed"] > 1000, answers  # the mutations did break things
        assert "handler failed" not in s.log(), s.log()[-3000:]
        c = client(s, "after-fuzz")
        assert run_to_end(c, submit(c, settings=MINI).job)[-1].type == "finished"
        c.close()


# --- memory -----------------------------------------------------------------------------------------------------

def test_server_memory_stays_bounded_with_a_client_that_never_reads(tmp_path):
    """Limit: 8 MiB of unread big messages per connection (--max-unread-mib 8); the server's resident memory
    may grow by at most 40 MiB while a client that never reads asks 300 times for a ~1 MB result (~300 MB
    without the bound)."""
    with ServerProcess(tmp_path / "results", extra=["--max-unread-mib", "8"]) as s:
        c = client(s, "owner")
        job = submit(c, settings={**MINI, "texture_size": 512}).job
        assert run_to_end(c, job)[-1].type == "finished"
        reply = _ask(c, c.send_fetch(job))
        size = sum(a.nbytes for a in reply.arrays.values())
        assert size > 700_000, size
        assert s.proc is not None
        before = _rss_bytes(s.proc.pid)
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 1)  # this client's own libzmq buffers almost nothing either
        sock.setsockopt(zmq.RCVBUF, 4096)
        sock.connect(s.endpoint)
        sock.send_multipart(P.encode({"type": "hello", "id": "h", "client": c.client_id}))
        for i in range(300):
            sock.send_multipart(P.encode({"type": "fetch", "id": f"f{i}", "job": job}))
        time.sleep(3)
        assert _ask(c, c.send_ping(), 5).type == "pong"  # others are still served
        grown = _rss_bytes(s.proc.pid) - before
        assert grown < 40 * 2**20, f"server grew by {grown / 2**20:.1f} MiB"
        # Reading now: the answers past the budget were named errors, not silence.
        codes = []
        while sock.poll(2000):
            m = P.decode(sock.recv_multipart())
            codes.append(m.type if m.type != "error" else m["code"])
        assert "backlog" in codes and "result" in codes, codes[:20]
        sock.close()
        c.close()


# --- start-up ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_an_unusable_results_folder_is_refused_at_start(tmp_path, kind):
    target = tmp_path / "results"
    if kind == "file":
        target.write_text("not a folder")
    else:
        target.mkdir()
        target.chmod(0o500)
        if os.access(target, os.W_OK):
            pytest.skip("running as root: permissions do not stop writes")
    proc = subprocess.run([sys.executable, "-m", "backend", "serve", "--bind", f"tcp://127.0.0.1:{free_port()}",
                           "--results", str(target), "--device", "cpu"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    target.chmod(0o700) if kind != "file" else None
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert str(target) in proc.stderr and ("is a file" if kind == "file" else "not a writable folder") in proc.stderr
    assert "Traceback" not in proc.stderr


def test_keys_are_written_owner_only(tmp_path):
    keys = tmp_path / "keys"
    subprocess.run([sys.executable, "-m", "backend", "keys", str(keys)], cwd=ROOT, check=True, timeout=60,
                   capture_output=True)
    for name in ("server.key_secret", "client.key_secret"):
        assert (keys / name).stat().st_mode & 0o777 == 0o600, name
    assert keys.stat().st_mode & 0o077 == 0
