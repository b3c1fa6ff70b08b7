"""The add-on against a real backend process, inside Blender 4.5 and 5.3 (bpy wheels), driven through its
operators and its timer callback (tests/blender/addon_generate.py): Start local backend, Generate with streaming, Cancel,
Refine, list + Import, then the backend frozen (heartbeat loss), thawed and killed.

Job settings are tiny (8 NeRF steps at 16 px, 32^3 marching cubes, 64 px texture) so the whole run takes about a
minute on a loaded 2-core CPU; what is checked does not depend on quality.
"""

from __future__ import annotations

import json
import socket
import sys

import pytest

from test_addon_build import REPO, addon_zip, blender_python_of, run_blender_script  # noqa: F401 - addon_zip is a fixture

TINY = {"steps": 8, "representation": "nerf", "nerf_samples_per_ray": 16, "nerf_grid_levels": 4,
        "nerf_grid_log2_table": 12, "render_res_start": 16, "render_res_end": 16, "procedural_resolution": 16,
        "mesh_resolution": 32, "texture_size": 64, "preview_every": 4, "camera_bank_size": 4, "preview_size": 32}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The default Blender and the newest (Python 3.13): the oldest and middle ones run the cheaper smoke and
# lifecycle tests, which keeps CI in its time budget.
GENERATE_ON = ("4.5", "5.3")


@pytest.fixture(scope="module", params=GENERATE_ON)
def run(request, addon_zip, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("addon_generate")
    results, out = tmp / "results", tmp / "out"
    results.mkdir()
    out.mkdir()
    from backend.priors.stable_diffusion import save_random_pipeline

    # The preferences' models folder: one tiny random Stable Diffusion folder for the drop-down to offer.
    sd_folder = save_random_pipeline(tmp / "models" / "tiny-sd", "tiny", seed=0)
    # The backend runs with this interpreter: the project's environment (torch, pyzmq), as a user's would.
    report = run_blender_script("addon_generate.py", addon_zip, sys.executable, REPO, results, free_port(), out,
                                json.dumps(TINY), tmp / "models", tmp_path=tmp, timeout=900,
                                python=blender_python_of(request.param))
    assert report["blender"].startswith(request.param + ".")
    report["sd_folder"] = str(sd_folder.resolve())
    return report, results


def glb_counts(results, job: str) -> tuple[int, int]:
    from backend.export.meshfile import read_glb

    arrays = read_glb(results / job / "mesh.glb")
    return len(arrays["vertices"]), len(arrays["faces"])


def test_backend_started_from_blender_reports_device_and_model(run):
    report, _ = run
    c = report["connected"]
    assert c["connection"] == "connected" and c["device"] == "cpu" and c["model"] == "procedural"
    assert c["job_slots"] == 1  # hello's capabilities.job_slots: auto on the CPU
    assert c["timer_registered"]


def test_the_model_drop_down_offers_the_backends_models_and_a_missing_one_is_refused_in_words(run):
    report, results = run
    # procedural, the shipped world-SD, then the models folder's
    assert report["model_items"] == ["procedural", "world-sd", report["sd_folder"]]
    assert report["model_after_choice"] == report["sent_model"] == report["sd_folder"]
    assert report["choice_after_typing"] == "procedural"
    # Sent although it is the schema's default: a backend started with another --model must not override it.
    assert report["sent_model_procedural"] == "procedural"
    missing = report["missing_model"]
    assert "not-downloaded" in missing["last_error"] and "--local-dir" in missing["last_error"]
    assert missing["job_state"] == "failed"
    assert len(report["results"]) == 3  # the jobs that ran below; the refused one never queued


def test_generate_streams_into_one_object_named_after_the_prompt_at_the_cursor(run):
    report, results = run
    g = report["generate"]
    assert g["job_state"] == "done", g
    assert g["last_error"] == ""
    assert g["meshes_received"] == 2 and len(report["streamed"]) == 2  # one intermediate (step 4), the final
    assert len({s["mesh_ptr"] for s in report["streamed"]}) == 1  # replaced in place, never a second object
    obj = report["generated_object"]
    assert obj["name"] == "a red cube" and obj["prompt"] == "a red cube" and obj["job"] == g["job_id"]
    assert obj["location"] == [0.5, -0.5, 0.25]
    assert report["active_object"] == "a red cube"
    assert (obj["vertices"], obj["faces"]) == glb_counts(results, g["job_id"])
    assert obj["material"] == {"principled": True, "base_color_from": "TEX_IMAGE"}
    assert obj["image"] == {"size": [64, 64], "packed": True}


def test_undo_removes_the_generated_object_and_redo_restores_it(run):
    report, _ = run
    assert report["after_undo_present"] is False
    redone, obj = report["after_redo"], report["generated_object"]
    assert redone is not None
    assert (redone["vertices"], redone["name"], redone["image"]) == (obj["vertices"], obj["name"], obj["image"])


def test_progress_step_eta_and_preview_reach_the_panel_state(run):
    report, _ = run
    steps = [p[0] for p in report["generate_progress"] if p[1] == 8]
    assert steps == sorted(steps) and steps[-1] == 8 and len(set(steps)) >= 4
    assert any(eta > 0 for _, _, eta in report["generate_progress"])
    assert report["generate"]["progress"] == pytest.approx(1.0)
    assert report["generate"]["previews_received"] >= 1
    assert report["preview_image"] == [4 * 32, 32]  # the turntable strip: 4 views of 32 px


def test_cancel_stops_the_running_job(run):
    report, _ = run
    assert report["cancel_state_right_after"] == "cancelling"
    c = report["cancelled"]
    assert c["job_state"] == "cancelled" and c["steps"] == 200 and 1 <= c["step"] < 200
    assert c["last_error"] == ""


def test_refine_continues_the_generated_object_in_place(run):
    report, results = run
    r, obj = report["refine"], report["refined_object"]
    assert r["job_state"] == "done" and r["last_error"] == "", r
    assert r["job_id"] != report["first_job"]
    assert r["steps"] == 16  # continued from the first job's 8 steps, 8 more
    assert report["objects_added_by_refine"] == 0
    assert obj["name"] == "a red cube" and obj["mesh_ptr"] == report["before_refine_mesh_ptr"]
    assert obj["job"] == r["job_id"] and obj["prompt"] == "a green cube"
    assert (obj["vertices"], obj["faces"]) == glb_counts(results, r["job_id"])
    record = json.loads((results / r["job_id"] / "job.json").read_text())
    assert record["parent"] == report["first_job"]
    assert record["settings"]["edit_prompt"] == "red"  # the edit box goes with Refine


def test_results_list_and_import(run):
    report, results = run
    states = {r["prompt"]: r["state"] for r in report["results"]}
    assert states == {"a red cube": "finished", "a blue sphere": "cancelled", "a green cube": "finished"}
    imported = report["imported"]
    assert imported["name"] == "a red cube.001" and imported["job"] == report["first_job"]
    assert (imported["vertices"], imported["faces"]) == glb_counts(results, report["first_job"])
    assert imported["image"] == {"size": [64, 64], "packed": True}


def test_generate_batch_submits_one_job_per_line_and_lists_each_result_as_it_finishes(run):
    report, results = run
    batch = report["batch"]
    assert not report["batch_poll_without_text"]  # no Prompts text chosen: the button is greyed out
    assert batch["total"] == batch["ended"] == 2  # the blank and the comment line are not prompts
    assert [j["prompt"] for j in batch["jobs"]] == ["a yellow cone", "a red cube"]
    for i, job in enumerate(batch["jobs"]):
        assert job["final"] and job["vertices"] > 0
        assert job["location"] == [2.0 + 1.5 * i, 0.0, 0.0]  # side by side from the cursor
        record = json.loads((results / job["job"] / "job.json").read_text())
        # The edit box was still filled in: a new job never sends it (the backend would refuse it).
        assert record["status"] == "finished" and record["settings"]["edit_prompt"] == ""
    # Its own object, not the earlier "a red cube" Generate made.
    assert batch["jobs"][1]["name"] != report["generated_object"]["name"]
    # The list showed the first result while the second job was still to end (one worker: they run in turn).
    first, second = (batch["listed_when"][j["job"]] for j in batch["jobs"])
    assert first == 1 and second == 2


def test_backend_lost_recovered_and_killed_reach_the_panel_without_timer_exceptions(run):
    report, _ = run
    # Frozen (SIGSTOP): the connection stays up until its ZMTP heartbeats time out, so the shared client allows
    # up to BACKEND_TIMEOUT_S + HEARTBEAT_INTERVAL_S (a busy backend must not read as lost).
    assert report["lost_after_stop_s"] < 3.0 + 1.0 + 0.5
    assert report["lost"]["last_error"].startswith("Backend lost: no heartbeat")
    assert report["recovered_s"] < 5.0 and report["recovered"]["connection"] == "connected"
    # Killed: the connection drops, heartbeats stop, the panel says so within 3 s.
    assert report["lost_after_kill_s"] < 3.0
    assert report["killed"]["last_error"].startswith("Backend lost")
    assert report["after_kill_ticks"]["connection"] == "lost"
    # Our own backend killed: reported from its exit status at once, in words.
    assert report["restarted"]["connection"] == "connected"
    assert report["lost_after_own_kill_s"] < 1.0
    assert "the local backend was killed (signal 9)" in report["own_killed"]["last_error"]
    assert report["timer_errors_final"] == []
    assert not report["timer_after_disable"]


def test_the_timer_callback_never_blocks_blender(run):
    report, _ = run
    # The longest tick includes building a 1.3k-vertex mesh with its texture; a blocking receive would be seconds.
    assert report["max_tick_s"] < 0.5
    assert report["ticks"] > 100
