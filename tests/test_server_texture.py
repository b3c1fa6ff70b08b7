"""Texture jobs over the wire: a real server process textures a mesh sent in a ``submit`` (kind "texture") and sends
it back with the same geometry, refines and edits it by text from its checkpoint with that geometry, and a restarted
server resumes one its killed predecessor left running from its checkpoint; malformed meshes are refused with
``bad_field`` naming the array and what is allowed, and the server keeps serving."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest

from server_support import ServerProcess, client, drain, free_port, run_to_end, wait_for
from shared import protocol as P
from shared.texture_mesh import MAX_TEXTURE_FACES, MAX_TEXTURE_VERTICES

# A texture job that takes seconds on a CPU: the procedural prior at draft, a few steps, a small texture.
SETTINGS = {"quality": "draft", "steps": 6, "camera_bank_size": 4, "texture_size": 64, "procedural_resolution": 32,
            "preview_every": 3}
STREAM = {"progress_every": 1, "preview_size": 16, "preview_views": 1}


def cube() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 0.6 m cube: 8 vertices, 12 outward triangles, and per-vertex UVs (a planar map, enough to bake into)."""
    v = np.array([[x, y, z] for x in (-0.3, 0.3) for y in (-0.3, 0.3) for z in (-0.3, 0.3)], dtype=np.float32)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = []
    for a, b, c, d in quads:
        faces += [(a, b, c), (a, c, d)]
    f = np.array(faces, dtype=np.int32)
    # Orient every triangle outward (normal along the centroid), whatever order the table lists corners in.
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    flip = (n * v[f].mean(axis=1)).sum(axis=1) < 0
    f[flip] = f[flip][:, ::-1]
    uvs = (v[:, :2] / 0.6 + 0.5).astype(np.float32)
    return v, f, uvs


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("texture") / "results") as s:
        yield s


def texture(c, vertices, faces, uvs=None, prompt="a blue cube", settings=None, stream=None):
    rid = c.send_texture(prompt, vertices, faces, uvs, settings or SETTINGS, stream or STREAM)
    return wait_for(c, lambda m: m.get("id") == rid, 30)


def test_a_mesh_with_uvs_comes_back_textured_with_its_own_vertices_faces_and_uvs(server):
    c = client(server, "texturer")
    v, f, uvs = cube()
    accepted = texture(c, v, f, uvs)
    assert accepted.type == "accepted", accepted.header
    job = accepted.job
    seen = run_to_end(c, job, 300)
    kinds = [m.type for m in seen]
    assert kinds[-1] == "finished", [m.header for m in seen if m.type == "error"]
    assert kinds.count("progress") >= 3 and "preview" in kinds  # streams like a generation
    final = next(m for m in seen if m.type == "mesh" and m.get("final"))
    assert np.array_equal(final.arrays["vertices"], v)
    assert np.array_equal(final.arrays["faces"], f)
    assert np.allclose(final.arrays["uvs"], uvs, atol=1e-6)
    assert final.arrays["texture"].shape == (64, 64, 3)
    # The mesh was kept in the job's folder, and fetch returns what was streamed.
    folder = server.results / job
    record = json.loads((folder / "job.json").read_text())
    assert record["command"] == "texture" and record["input_mesh"] == "input_mesh.ply"
    assert (folder / "input_mesh.ply").is_file()
    rid = c.send_fetch(job)
    result = wait_for(c, lambda m: m.get("id") == rid, 30)
    assert result.type == "result" and np.array_equal(result.arrays["faces"], f)
    c.close()


def test_a_finished_texture_job_is_refined_and_then_edited_by_text_keeping_its_mesh(server):
    """A refine continues the texture job's checkpoint (which holds the mesh); an edit of that refine (a chain of two)
    too. Each result has the input's vertices, faces and UVs: only the texture trains."""
    c = client(server, "texture-refiner")
    v, f, uvs = cube()
    source = texture(c, v, f, uvs).job
    assert run_to_end(c, source, 300)[-1].type == "finished"
    assert (server.results / source / "checkpoint.pt").is_file()  # written as a generate job's is
    parent, start = source, 6
    # One after the other: a refine of a running job would stop it.
    for prompt, settings in (("a blue cube", {"steps": 3}), ("a red cube", {"steps": 3, "edit_prompt": "blue"})):
        rid = c.send_refine(parent, prompt=prompt, settings=settings)
        accepted = wait_for(c, lambda m: m.get("id") == rid, 30)
        assert accepted.type == "accepted" and accepted["parent"] == parent, accepted.header
        seen = run_to_end(c, accepted.job, 300)
        assert seen[-1].type == "finished", [m.header for m in seen if m.type == "error"]
        assert next(m for m in seen if m.type == "started")["step"] == start
        assert not [m for m in seen if m.type == "mesh" and not m.get("final")]  # no intermediate meshes
        final = next(m for m in seen if m.type == "mesh" and m.get("final"))
        assert np.array_equal(final.arrays["vertices"], v) and np.array_equal(final.arrays["faces"], f)
        assert np.allclose(final.arrays["uvs"], uvs, atol=1e-6)
        record = json.loads((server.results / accepted.job / "job.json").read_text())
        assert record["command"] == "texture" and record["parent"] == parent and record["steps_done"] == start + 3
        parent, start = accepted.job, start + 3
    edited = accepted
    record = json.loads((server.results / edited.job / "job.json").read_text())
    assert record["settings"]["edit_prompt"] == "blue" and record["prompt"] == "a red cube"
    # As on its submit, a texture job's refine streams no intermediate meshes, however far down the chain.
    rid = c.send_refine(edited.job, settings={"steps": 3}, stream={"mesh_every": 1})
    refused = wait_for(c, lambda m: m.get("id") == rid, 10)
    assert refused.type == "error" and refused["code"] == "bad_field" and "'mesh_every'" in refused["message"]
    c.close()


def test_a_mesh_without_uvs_is_unwrapped_and_keeps_every_face_corner(server):
    c = client(server)
    v, f, _ = cube()
    accepted = texture(c, v, f.astype(np.uint32))  # uint32 indices are allowed too
    assert accepted.type == "accepted", accepted.header
    seen = run_to_end(c, accepted.job, 300)
    assert seen[-1].type == "finished"
    final = next(m for m in seen if m.type == "mesh" and m.get("final"))
    out_v, out_f = final.arrays["vertices"], final.arrays["faces"]
    # The unwrap splits vertices along seams but keeps the faces in order: face i's corners are where they were
    # (the add-on maps the returned per-corner UVs back onto the user's mesh through exactly this).
    assert len(out_f) == len(f) and len(out_v) >= len(v)
    assert np.array_equal(out_v[out_f], v[f])
    assert final.arrays["uvs"].shape == (len(out_v), 2)
    c.close()


def _bad_cases():
    v, f, uvs = cube()
    nan = v.copy()
    nan[3, 1] = np.nan
    out_of_range = f.copy()
    out_of_range[5, 2] = 8
    negative = f.copy()
    negative[0, 0] = -1
    return [
        ("nan", {"vertices": nan, "faces": f}, ["'vertices'", "NaN"]),
        ("index 8", {"vertices": v, "faces": out_of_range}, ["'faces'", "0..7"]),
        ("index -1", {"vertices": v, "faces": negative}, ["'faces'", "0..7"]),
        ("float faces", {"vertices": v, "faces": f.astype(np.float32)}, ["'faces'", "float32", "int32 or uint32"]),
        ("uint8 vertices", {"vertices": (v * 0).astype(np.uint8), "faces": f}, ["'vertices'", "float32"]),
        ("flat vertices", {"vertices": v[:, :2].copy(), "faces": f}, ["'vertices'", "[V, 3]"]),
        ("quads", {"vertices": v, "faces": np.zeros((3, 4), np.int32)}, ["'faces'", "[F, 3]"]),
        ("uv rows", {"vertices": v, "faces": f, "uvs": uvs[:5].copy()}, ["'uvs'", "one per vertex (8)"]),
        ("no faces", {"vertices": v}, ["'faces' is missing"]),
        ("empty faces", {"vertices": v, "faces": np.zeros((0, 3), np.int32)}, ["'faces'", f"1 to {MAX_TEXTURE_FACES}"]),
        ("too many faces", {"vertices": v, "faces": np.zeros((MAX_TEXTURE_FACES + 1, 3), np.int32)},
         ["'faces'", f"1 to {MAX_TEXTURE_FACES}", "decimate"]),
        ("too many vertices", {"vertices": np.zeros((MAX_TEXTURE_VERTICES + 1, 3), np.float32), "faces": f},
         ["'vertices'", f"3 to {MAX_TEXTURE_VERTICES}"]),
        ("extra array", {"vertices": v, "faces": f, "normals": v}, ["normals"]),
    ]


@pytest.mark.parametrize("case,arrays,words", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_a_malformed_mesh_is_refused_naming_the_array_and_the_server_keeps_serving(server, case, arrays, words):
    c = client(server)
    rid = c.send("submit", arrays, kind="texture", prompt="a blue cube", settings=SETTINGS, stream=STREAM)
    reply = wait_for(c, lambda m: m.get("id") == rid, 30)
    assert reply.type == "error" and reply["code"] == "bad_field", reply.header
    for word in words:
        assert word in reply["message"], (word, reply["message"])
    rid = c.send_ping()
    assert wait_for(c, lambda m: m.get("id") == rid, 10).type == "pong"
    assert not [m for m in drain(c) if m.type == "accepted"]  # nothing was queued
    c.close()


def test_wrong_kinds_stream_options_and_torn_frames_are_refused(server):
    c = client(server)
    v, f, uvs = cube()
    checks = [
        (c.send("submit", {"vertices": v, "faces": f}, prompt="a blue cube", settings=SETTINGS),
         "bad_field", "only with kind 'texture'"),
        (c.send("submit", kind="paint", prompt="a blue cube"), "bad_field", "allowed: generate, texture"),
        (c.send_texture("a blue cube", v, f, uvs, SETTINGS, {"mesh_every": 2}), "bad_field", "'mesh_every'"),
    ]
    for rid, code, words in checks:
        reply = wait_for(c, lambda m: m.get("id") == rid, 30)
        assert reply.type == "error" and reply["code"] == code and words in reply["message"], reply.header
    # A frame shorter than its descriptor says: malformed, answered, and the connection still works.
    frames = P.encode({"type": "submit", "id": "torn", "kind": "texture", "prompt": "a blue cube"},
                      {"vertices": v, "faces": f})
    c.socket.send_multipart([frames[0], frames[1][:-4], frames[2]])
    reply = wait_for(c, lambda m: m.get("id") == "torn", 10)
    assert reply.type == "error" and reply["code"] == "malformed" and "'vertices'" in reply["message"]
    accepted = texture(c, v, f, uvs, settings={**SETTINGS, "steps": 2, "preview_every": 0})
    assert accepted.type == "accepted"
    assert run_to_end(c, accepted.job, 300)[-1].type == "finished"
    c.close()


def test_a_texture_job_a_killed_server_left_running_resumes_from_its_checkpoint_after_a_restart(tmp_path):
    """The server is SIGKILLed just after the job's checkpoint at step 4 of 8 (its writes: the running record, the
    checkpoints at steps 2 and 4). The restarted server resumes the job from that checkpoint, which holds the mesh
    (backend/jobs/recovery.py): it starts at step 4, and its texture is the one an uninterrupted run of the same job
    bakes, texel for texel (the checkpoint holds the colour field, optimiser, step and generator)."""
    results, port = tmp_path / "results", free_port()
    v, f, uvs = cube()
    settings = {**SETTINGS, "steps": 8, "preview_every": 0, "checkpoint_every": 2}
    s = ServerProcess(results, port).start(env={"TBSD_TEST_KILL_AT_PUBLISH": "3+"})
    try:
        c = client(s, "restarted")
        job = texture(c, v, f, uvs, settings=settings).job
        assert s.wait(120) == -signal.SIGKILL, s.log()[-3000:]
        c.close()
        assert (results / job / "checkpoint.pt").is_file()
        s.stop()
        s = ServerProcess(results, port).start()
        c = client(s, "restarted")  # the same token: the job's events come to it again
        seen = run_to_end(c, job, 300)
        assert seen[-1].type == "finished", [m.header for m in seen if m.type == "error"]
        started = next(m for m in seen if m.type == "started")
        assert (started["step"], started["total"]) == (4, 8), started.header
        assert min(m["step"] for m in seen if m.type == "progress") == 5
        final = next(m for m in seen if m.type == "mesh" and m.get("final"))
        assert np.array_equal(final.arrays["vertices"], v) and np.array_equal(final.arrays["faces"], f)
        assert np.allclose(final.arrays["uvs"], uvs, atol=1e-6)
        record = json.loads((results / job / "job.json").read_text())
        assert record["status"] == "finished" and record["recovered"] == 1, record
        assert record["resumed_at_step"] == 4 and record["steps_done"] == 8, record
        assert record["command"] == "texture" and record["mesh_source"] == "input_mesh.ply", record
        assert "from its checkpoint" in s.log(), s.log()[-3000:]
        # The same job, never interrupted, on the same server: the same texture.
        again = texture(c, v, f, uvs, settings=settings).job
        straight = run_to_end(c, again, 300)
        assert straight[-1].type == "finished", [m.header for m in straight if m.type == "error"]
        reference = next(m for m in straight if m.type == "mesh" and m.get("final"))
        assert np.array_equal(final.arrays["texture"], reference.arrays["texture"])
        c.close()
    finally:
        s.stop()


def _texture_record(store, job: str, *, checkpoint: bool, mesh: bool) -> dict:
    """A texture job's ``running`` record as a killed server left it, with its folder's mesh file and checkpoint."""
    from backend.jobs.executor import JobSpec
    from backend.jobs.mesh_input import INPUT_MESH_FILE
    from shared.status import JobStatus

    spec = JobSpec(job, "owner", "a blue cube", {**SETTINGS, "checkpoint_every": 2},
                   {"preview_views": 1, "preview_size": 16, "mesh_every": 0, "progress_every": 1},
                   "2026-01-01T00:00:00Z", input_mesh=INPUT_MESH_FILE)
    folder = store.job_dir(job)
    folder.mkdir(parents=True)
    if mesh:
        (folder / INPUT_MESH_FILE).write_bytes(b"ply")  # recover looks only for the files
    if checkpoint:
        (folder / "checkpoint.pt").write_bytes(b"checkpoint")
    record = spec.record(JobStatus.RUNNING, ended=None)
    store.write_record(job, record)
    return record


def test_recover_resumes_a_texture_job_from_its_checkpoint_else_from_its_mesh(tmp_path):
    """With a checkpoint a texture job is resumed from it (its mesh file not needed); without one it runs again from
    its start, from its mesh file; with neither it is lost."""
    from backend.jobs.recovery import recover
    from backend.jobs.results import ResultStore

    store = ResultStore(tmp_path / "results")
    cases = {"kept": (True, True), "nomesh": (True, False), "fresh": (False, True), "gone": (False, False)}
    live = {job: _texture_record(store, job, checkpoint=ckpt, mesh=mesh) for job, (ckpt, mesh) in cases.items()}
    out = recover(store, live)
    assert out.lost == ["gone"]
    resumed = {spec.id: spec for spec in out.resumed}
    assert set(resumed) == {"kept", "nomesh", "fresh"}
    for job in ("kept", "nomesh"):
        spec = resumed[job]
        assert spec.resume_checkpoint == str((store.job_dir(job) / "checkpoint.pt").resolve())
        plan = spec.plan(store.job_dir(job))
        assert plan.resume == store.job_dir(job).resolve() / "checkpoint.pt" and plan.mesh is None
    fresh = resumed["fresh"]
    assert fresh.resume_checkpoint is None
    plan = fresh.plan(store.job_dir("fresh"))
    assert plan.resume is None and plan.mesh == store.job_dir("fresh") / "input_mesh.ply"
    for job in resumed:
        record = store.read_record(job)
        assert record["status"] == "queued" and record["recovered"] == 1 and record["input_mesh"] == "input_mesh.ply"
    assert store.read_record("gone")["status"] == "lost"
