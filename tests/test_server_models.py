"""The model per job through a real `python -m backend serve`: hello lists the models on the machine (the HF
cache and --models-dir) and the IP-Adapters (shipped, and in --models-dir; an isd job runs with a listed one), one server switches between the procedural prior and a tiny random Stable Diffusion
folder job by job (keeping the last one loaded), and a model that is not here is refused before it queues with
an error naming it and how to fetch it."""

from __future__ import annotations

import json
import shutil

import pytest

from backend.shipped_models import SHIPPED_ADAPTERS
from server_support import QUIET_STREAM, TINY, ServerProcess, client, run_to_end, submit, wait_for

# The SD path at its smallest (32 px renders: the tiny UNet's latents are 4x4).
SD_TINY = {**TINY, "steps": 4, "render_res_start": 32, "render_res_end": 32}
HUB_ID = "tbsd-test/tiny-sd"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from backend.priors.stable_diffusion import save_random_pipeline

    tmp = tmp_path_factory.mktemp("models")
    models = tmp / "models"
    folder = save_random_pipeline(models / "tiny-sd", "tiny", seed=0)
    (models / "half-copied" / "unet").mkdir(parents=True)  # not a whole pipeline: never offered
    adapter = _tiny_adapter(models / "tiny-ip", folder)  # an IP-Adapter for the tiny UNet, beside the models
    (models / "half-ip" / "image_encoder").mkdir(parents=True)  # an adapter without its files: never offered
    (models / "half-ip" / "ip-adapter.safetensors").write_bytes(adapter.joinpath("ip-adapter.safetensors").read_bytes())
    # A hub id in a Hugging Face cache laid out as huggingface_hub writes it (refs/main -> snapshot folder).
    cache = tmp / "hf-cache"
    repo = cache / ("models--" + HUB_ID.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    (cache / "models--someone--text-only" / "snapshots" / "ffff").mkdir(parents=True)  # no pipeline in it
    with pytest.MonkeyPatch.context() as mp:
        # The server must find models only where the test put them, and never reach for the network.
        mp.setenv("HF_HUB_CACHE", str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        with ServerProcess(tmp / "results", extra=["--models-dir", str(models)]) as server:
            yield server, folder


def _tiny_adapter(out, sd_folder):
    """A real IP-Adapter (random weights) for the tiny pipeline's UNet: the files the server lists and the worker
    loads."""
    import torch
    from diffusers import UNet2DConditionModel

    from backend.priors.ip_adapter import build_image_encoder, initial_adapter_state, save_adapter

    torch.manual_seed(0)
    encoder = build_image_encoder("tiny")
    unet = UNet2DConditionModel.from_pretrained(sd_folder / "unet")
    state = initial_adapter_state(unet, int(encoder.config.projection_dim), from_text=False,
                                  generator=torch.Generator().manual_seed(0))
    return save_adapter(out, state, encoder, dtype=torch.float32)


def test_hello_lists_procedural_the_hf_cache_and_the_models_folder(setup):
    server, folder = setup
    c = client(server, "lister", hello=False)
    c.send_hello(name="pytest")
    welcome = wait_for(c, lambda m: m.type == "welcome", 10)
    models = welcome["capabilities"]["models"]
    assert [(m["name"], m["kind"]) for m in models] == [
        ("procedural", "procedural"), ("world-sd", "shipped"), (HUB_ID, "hub"), (str(folder.resolve()), "folder")]
    assert welcome["capabilities"]["model"] == "procedural"  # what a job naming no model gets
    assert welcome["capabilities"]["job_slots"] == 1  # --jobs-per-gpu auto on the CPU
    # The IP-Adapters: the models folder's complete one (the shipped world-sd-ip only once models/world-sd-ip/ holds
    # its trained files, which this checkout may not have).
    shipped = [{"name": "world-sd-ip", "kind": "shipped", "label": SHIPPED_ADAPTERS["world-sd-ip"][1]}] \
        if SHIPPED_ADAPTERS["world-sd-ip"][0].joinpath("ip-adapter.safetensors").is_file() else []
    assert welcome["capabilities"]["ip_adapters"] == shipped + [
        {"name": str((folder.parent / "tiny-ip").resolve()), "kind": "folder", "label": "tiny-ip"}]
    c.close()


def test_an_isd_job_names_a_listed_ip_adapter_and_runs_with_it(setup):
    server, folder = setup
    c = client(server, "isd")
    c.send_hello(name="pytest")
    adapters = wait_for(c, lambda m: m.type == "welcome", 10)["capabilities"]["ip_adapters"]
    named = next(a["name"] for a in adapters if a["kind"] == "folder")
    accepted = submit(c, "a red cube", dict(SD_TINY, model=str(folder), method="isd", ip_adapter=named), QUIET_STREAM)
    assert accepted.type == "accepted", accepted.header
    messages = run_to_end(c, accepted.job, timeout=300)
    assert messages[-1].type == "finished", [m.header for m in messages[-3:]]
    record = json.loads((server.results / accepted.job / "job.json").read_text())
    assert record["settings"]["ip_adapter"] == named and record["reference"]["source"] == "sample"
    c.close()


def test_one_server_switches_between_procedural_and_a_stable_diffusion_folder(setup):
    server, folder = setup
    c = client(server, "switcher")
    asked = ["procedural", str(folder), str(folder), "procedural"]
    records = []
    for model in asked:
        settings = dict(SD_TINY if model != "procedural" else TINY, model=model)
        accepted = submit(c, "a red cube", settings, QUIET_STREAM)
        assert accepted.type == "accepted", accepted.header
        messages = run_to_end(c, accepted.job, timeout=300)
        assert messages[-1].type == "finished", [m.header for m in messages[-3:]]
        records.append(json.loads((server.results / accepted.job / "job.json").read_text()))
    assert [r["settings"]["model"] for r in records] == asked
    assert [r["model"] for r in records] == asked
    # Loaded on a switch, kept for the next job on the same model.
    assert [r["prior_loaded"] for r in records] == [True, True, False, True]
    # The procedural world has ground truth; the SD jobs ran without it (they really used the other prior).
    assert ["figures" in r for r in records] == [True, False, False, True]
    c.close()


@pytest.mark.parametrize("model, words", [
    ("nobody/no-such-model", ["'nobody/no-such-model'", "not in the Hugging Face cache", "hf download nobody/no-such-model"]),
    ("/nowhere/sd-folder", ["'/nowhere/sd-folder'", "does not exist", "--local-dir /nowhere/sd-folder"]),
    ("half-copied", ["'half-copied'", "neither 'procedural', a shipped model (world-sd), a diffusers folder nor a hub id"]),
])
def test_a_missing_model_is_refused_before_it_queues_naming_it_and_how_to_fetch_it(setup, model, words):
    server, folder = setup
    c = client(server, "missing")
    reply = submit(c, "a red cube", dict(TINY, model=model), QUIET_STREAM)
    assert reply.type == "error" and reply["code"] == "model", reply.header
    for word in words:
        assert word in reply["message"], reply["message"]
    # The models that are here, so the artist can pick one.
    assert f"on this machine: procedural, world-sd, {HUB_ID}, {folder.resolve()}" in reply["message"]
    rid = c.send_list()
    listed = wait_for(c, lambda m: m.get("id") == rid, 10)
    assert listed["results"] == []  # nothing queued, nothing ran
    c.close()


def test_an_incomplete_folder_is_refused_with_what_it_lacks(setup):
    server, folder = setup
    c = client(server, "incomplete")
    half = folder.parent / "half-copied"
    reply = submit(c, "a red cube", dict(TINY, model=str(half)), QUIET_STREAM)
    assert reply.type == "error" and reply["code"] == "model", reply.header
    assert "is not a diffusers folder (no vae, text_encoder, tokenizer, scheduler)" in reply["message"]
    c.close()

