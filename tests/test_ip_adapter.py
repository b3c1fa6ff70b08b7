"""The Stable Diffusion prior with an image prompt: an IP-Adapter loaded through diffusers' own machinery.

Nothing is downloaded: a tiny random SD pipeline (backend/priors/stable_diffusion.py), a tiny random
CLIPVisionModelWithProjection and random IP-Adapter weights of the shapes diffusers expects are saved to a temporary
folder and loaded back through the product's loader. Random weights check plumbing (files, batching, which row reads
which image, scales), not image quality.

What "the IP prior's null branch" is: diffusers' pipelines give the unconditional image row a zero image embedding
(``prepare_ip_adapter_image_embeds``: ``torch.zeros_like``) under the same IP scale; it is NOT the text prior, since the
image projection's bias and LayerNorm shift still make image tokens from zeros. The test holds ``image_null`` to that
row of diffusers' own pipeline (loaded from the same files), and ``image_target`` to its conditional row; it would
fail if the product preprocessed the image differently from CLIPImageProcessor, numbered the attention layers' keys
differently from diffusers' loader, gave a text row any image attention, or ran the IP scale differently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.ip_adapter_source import AdapterMissing, check_adapter
from backend.priors.base import BranchImage, ImagePrompt, PriorError, PromptSet
from backend.priors.ip_adapter import (
    adapter_state,
    build_image_encoder,
    initial_adapter_state,
    install_adapter,
    save_adapter,
    write_adapter_file,
)
from backend.priors.stable_diffusion import StableDiffusionPrior, save_random_pipeline

PROMPT = "a red cube"
ALL4 = ["target", "null", "image_target", "image_null"]


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_pipeline(tmp_path_factory.mktemp("sd") / "tiny-sd", "tiny", seed=0)


def _random_adapter(sd_folder: Path, folder: Path, seed: int = 1) -> Path:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(sd_folder / "unet")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = build_image_encoder("tiny")
    # std 0.2: large enough that the image visibly moves a tiny random UNet's prediction
    state = initial_adapter_state(unet, int(encoder.config.projection_dim), from_text=False,
                                  generator=torch.Generator().manual_seed(seed), std=0.2)
    return save_adapter(folder, state, encoder, dtype=torch.float32)


@pytest.fixture(scope="module")
def adapter_folder(sd_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _random_adapter(sd_folder, tmp_path_factory.mktemp("ip") / "tiny-ip")


@pytest.fixture(scope="module")
def prior(sd_folder: Path, adapter_folder: Path) -> StableDiffusionPrior:
    return StableDiffusionPrior.from_pretrained(str(sd_folder), ip_adapter=str(adapter_folder))


def _reference(size: int = 32, seed: int = 0) -> torch.Tensor:
    # 8-bit values, so PIL and torch see exactly the same pixels
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, size, size), generator=g).float() / 255.0


def _inputs(prior: StableDiffusionPrior, b: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(b, *prior.sample_shape, generator=torch.Generator().manual_seed(3))
    return x, torch.tensor([700, 250][:b])


def _prompts(reference: torch.Tensor, scale: float = 0.5) -> PromptSet:
    return PromptSet(PROMPT, reference=ImagePrompt(reference, scale, 1e-3))


def test_the_image_branches_are_diffusers_own_conditional_and_zero_image_rows(prior, sd_folder, adapter_folder):
    """image_target / image_null equal the two rows diffusers' StableDiffusionPipeline makes from the same files
    (its load_ip_adapter, its CLIPImageProcessor, its zero negative embedding, set_ip_adapter_scale 0.5)."""
    from diffusers import StableDiffusionPipeline

    reference = _reference()
    x, t = _inputs(prior)
    ours = prior.predict_noise(x, t, _prompts(reference), ALL4)

    pipe = StableDiffusionPipeline.from_pretrained(sd_folder, safety_checker=None, requires_safety_checker=False)
    pipe.load_ip_adapter(str(adapter_folder), subfolder="", weight_name="ip-adapter.safetensors")
    pipe.set_ip_adapter_scale(0.5)
    pil = Image.fromarray((reference.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    (embeds,) = pipe.prepare_ip_adapter_image_embeds(pil, None, torch.device("cpu"), 1, True)  # [zeros; image]
    text = {s: pipe.encode_prompt(s, "cpu", 1, False)[0] for s in (PROMPT, "")}
    with torch.no_grad():
        for branch, row, s in (("image_target", 1, PROMPT), ("image_null", 0, "")):
            e = embeds[row:row + 1].expand(2, *embeds.shape[1:])
            theirs = pipe.unet(x, t, encoder_hidden_states=text[s].expand(2, -1, -1),
                               added_cond_kwargs={"image_embeds": [e]}).sample
            torch.testing.assert_close(ours[branch], theirs, rtol=1e-4, atol=1e-5, msg=branch)
    # The zero image still makes image tokens (the projection's bias, LayerNorm's shift): not the text prior.
    assert not torch.allclose(ours["image_null"], ours["null"], atol=1e-4)
    assert (ours["image_target"] - ours["target"]).abs().max() > 1e-3  # the reference moves the prediction


def test_text_rows_are_the_plain_prior_in_the_same_call(prior, sd_folder):
    """target and null, riding in the IP UNet's batch at gate 0, equal the UNet without any adapter; one call."""
    plain = StableDiffusionPrior.from_pretrained(str(sd_folder))
    x, t = _inputs(prior)
    calls: list[int] = []
    handle = prior.unet.register_forward_hook(lambda m, a, k, o: calls.append(a[0].shape[0]), with_kwargs=True)
    try:
        ours = prior.predict_noise(x, t, _prompts(_reference()), ALL4)
    finally:
        handle.remove()
    assert calls == [8]  # 4 branches x 2 samples, one UNet call
    theirs = plain.predict_noise(x, t, PromptSet(PROMPT), ["target", "null"])
    for branch in ("target", "null"):
        torch.testing.assert_close(ours[branch], theirs[branch], rtol=1e-5, atol=1e-6)


def test_ip_scale_zero_makes_the_image_branches_the_text_branches(prior):
    x, t = _inputs(prior)
    out = prior.predict_noise(x, t, _prompts(_reference(), scale=0.0), ALL4)
    assert torch.equal(out["image_target"], out["target"])  # gate 0: the image attention adds exactly 0
    assert torch.equal(out["image_null"], out["null"])


def test_the_reference_is_encoded_once_per_reference(prior):
    calls: list[int] = []
    handle = prior.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        x, t = _inputs(prior)
        reference = _reference(seed=5)
        for _ in range(3):  # as the 3D trainer does: a new PromptSet per view-prompt group and step, one tensor
            prior.predict_noise(x, t, _prompts(reference), ["image_target", "target"])
        prior.predict_noise(x, t, _prompts(_reference(seed=6)), ["image_target"])
    finally:
        handle.remove()
    assert len(calls) == 2


def test_the_adapter_read_back_from_a_unet_is_the_file_it_came_from(sd_folder, adapter_folder):
    """``adapter_state`` (what the world-SD trainer saves) inverts diffusers' install."""
    from diffusers import UNet2DConditionModel

    from backend.priors.ip_adapter import read_adapter_file

    state = read_adapter_file(adapter_folder / "ip-adapter.safetensors")
    unet = UNet2DConditionModel.from_pretrained(sd_folder / "unet")
    install_adapter(unet, state)
    back = adapter_state(unet)
    assert back.keys() == state.keys()
    for head in state:
        assert back[head].keys() == state[head].keys()
        for k in state[head]:
            assert torch.equal(back[head][k], state[head][k]), (head, k)


def test_isd_runs_end_to_end_through_the_image_command(sd_folder, adapter_folder, tmp_path, capsys, monkeypatch):
    import json

    from backend.priors import sampling

    monkeypatch.setattr(sampling, "REFERENCE_STEPS", 3)  # the drawn reference's DDIM steps: 50 cost seconds here

    from backend.cli import main

    ref = tmp_path / "ref.png"
    Image.fromarray((_reference(16).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(ref)
    out = tmp_path / "isd.png"
    code = main(["image", PROMPT, "--method", "isd", "--image", str(ref), "--model", str(sd_folder),
                 "--ip-adapter", str(adapter_folder), "--steps", "3", "--out", str(out), "--device", "cpu",
                 "--quiet"])
    assert code == 0, capsys.readouterr().err[-2000:]
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["settings"]["ip_adapter"] == str(adapter_folder) and record["reference"]["given"] == "ref.png"
    assert Image.open(out).size == (16, 16)
    # Without an image the reference is the model's own DDIM sample of the prompt (ModeDreamer's default), by the seed
    drawn = tmp_path / "drawn.png"
    code = main(["image", PROMPT, "--method", "isd", "--model", str(sd_folder), "--ip-adapter", str(adapter_folder),
                 "--steps", "2", "--out", str(drawn), "--device", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err[-2000:]
    assert json.loads(drawn.with_suffix(".json").read_text())["reference"]["source"] == "sample"


def test_a_drawn_reference_is_a_seeded_ddim_sample_of_the_plain_prior(prior, sd_folder):
    from backend.priors.sampling import ddim_sample

    def draw(p: StableDiffusionPrior, seed: int) -> torch.Tensor:
        return ddim_sample(p, PromptSet(PROMPT), torch.Generator().manual_seed(seed), steps=4)

    a, b, c = draw(prior, 4), draw(prior, 4), draw(prior, 5)
    assert a.shape == (3, prior.image_size, prior.image_size) and 0 <= float(a.min()) and float(a.max()) <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    plain = StableDiffusionPrior.from_pretrained(str(sd_folder))  # the adapter plays no part in drawing it
    torch.testing.assert_close(draw(plain, 4), a, rtol=1e-4, atol=1e-5)


def test_isd_on_stable_diffusion_without_an_adapter_is_refused_at_admission_and_at_the_start(sd_folder, capsys):
    from backend.jobs.admission import Admission, Refused
    from backend.reference import job_reference
    from shared.settings import validate

    admission = Admission()
    with pytest.raises(Refused) as err:
        admission.admit(PROMPT, {"method": "isd", "model": str(sd_folder)})
    assert err.value.code == "settings" and "set ip_adapter" in err.value.message
    with pytest.raises(Refused) as err:
        admission.admit(PROMPT, {"method": "isd", "model": str(sd_folder), "ip_adapter": str(sd_folder / "no")})
    assert err.value.code == "model" and "not found" in err.value.message
    from backend.cli import main

    code = main(["image", PROMPT, "--method", "isd", "--model", str(sd_folder), "--out", "unused.png", "--device",
                 "cpu", "--quiet"])
    assert code == 2 and "--ip-adapter" in capsys.readouterr().err  # the CLI refuses before loading the prior
    plain = StableDiffusionPrior.from_pretrained(str(sd_folder))
    with pytest.raises(PriorError, match="set ip_adapter"):
        job_reference(plain, PROMPT, validate({"method": "isd", "model": str(sd_folder)}), None)
    with pytest.raises(PriorError, match="no image prompt"):
        plain.predict_noise(*_inputs(plain), _prompts(_reference()), ["image_target"])


def test_missing_or_wrong_files_name_the_file_and_what_is_allowed(sd_folder, adapter_folder, tmp_path, monkeypatch):
    import shutil

    def load(spec: str) -> None:
        StableDiffusionPrior.from_pretrained(str(sd_folder), ip_adapter=spec)

    with pytest.raises(PriorError, match="not found.*ip_adapter may be"):
        load(str(tmp_path / "nothing"))
    no_weights = tmp_path / "no-weights"
    shutil.copytree(adapter_folder, no_weights)
    (no_weights / "ip-adapter.safetensors").unlink()
    with pytest.raises(PriorError, match=r"no weight file .*ip-adapter\.safetensors"):
        load(str(no_weights))
    with pytest.raises(AdapterMissing, match=r"no .*ip-adapter\.safetensors"):
        check_adapter(str(no_weights))
    no_encoder = tmp_path / "no-encoder"
    shutil.copytree(adapter_folder, no_encoder)
    (no_encoder / "image_encoder" / "model.safetensors").unlink()
    with pytest.raises(PriorError, match=r"image_encoder/model\.safetensors"):
        load(str(no_encoder))
    pickled = tmp_path / "ip-adapter.bin"
    pickled.write_bytes(b"not read")
    with pytest.raises(PriorError, match="pickled"):
        load(str(pickled))
    not_an_adapter = tmp_path / "other"
    shutil.copytree(adapter_folder, not_an_adapter)
    write_adapter_file({"image_proj": {}, "ip_adapter": {}, "other": {"x": torch.zeros(1)}},
                       not_an_adapter / "ip-adapter.safetensors")
    with pytest.raises(PriorError, match="holds no IP-Adapter"):
        load(str(not_an_adapter))
    check_adapter(str(adapter_folder))  # a complete one passes
    with monkeypatch.context() as m:  # a hub adapter offline and not cached: nothing is downloaded, and it says so
        m.setenv("HF_HUB_OFFLINE", "1")
        m.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
        with pytest.raises(PriorError, match="HF_HUB_OFFLINE is set.*huggingface-cli download h94/IP-Adapter"):
            load("h94/IP-Adapter/models/ip-adapter_sd15.safetensors")
    # Weights made for another UNet (another width of cross-attention) say so instead of a KeyError.
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(sd_folder / "unet")
    other = initial_adapter_state(unet, 16, from_text=False)
    other["ip_adapter"] = {k: v for k, v in list(other["ip_adapter"].items())[:2]}
    with pytest.raises(PriorError, match="made for another UNet"):
        install_adapter(unet, other)


def test_hub_ids_resolve_to_a_repository_a_subfolder_and_a_file(tmp_path, monkeypatch):
    from backend import shipped_models
    from backend.ip_adapter_source import resolve_adapter

    monkeypatch.setitem(shipped_models.SHIPPED_ADAPTERS, "world-sd-ip", (tmp_path / "world-sd-ip", "label"))
    with pytest.raises(AdapterMissing, match="ships with the product.*backend.worldsd.train_ip"):
        resolve_adapter("world-sd-ip")

    s = resolve_adapter("h94/IP-Adapter/models/ip-adapter_sd15.safetensors")
    assert (s.root, s.subfolder, s.weight_name, s.local) == ("h94/IP-Adapter", "models", "ip-adapter_sd15.safetensors",
                                                             False)
    assert s.encoder_subfolder == "models/image_encoder"
    s = resolve_adapter("someone/world-ip")
    assert (s.root, s.subfolder, s.weight_name) == ("someone/world-ip", "", "ip-adapter.safetensors")
    with pytest.raises(AdapterMissing, match="pickled"):
        resolve_adapter("h94/IP-Adapter/models/ip-adapter_sd15.bin")
    with pytest.raises(AdapterMissing, match="not on this machine"):
        check_adapter("h94/IP-Adapter/models/ip-adapter_sd15.safetensors", cache=Path("/nonexistent-cache"))


def test_the_image_branch_reads_the_reference_not_the_batch_row(prior):
    """Two samples with one reference: each sample's image_target is what a batch of one gives (rows line up)."""
    x, t = _inputs(prior)
    prompts = _prompts(_reference())
    both = prior.predict_noise(x, t, prompts, ["target", "image_target"])
    for i in range(2):
        one = prior.predict_noise(x[i:i + 1], t[i:i + 1], prompts, ["image_target"])
        torch.testing.assert_close(both["image_target"][i:i + 1], one["image_target"], rtol=1e-4, atol=1e-5)
    assert BranchImage(prompts.reference, zero=True).zero


def test_a_3d_isd_job_loads_the_adapter_through_the_job_runner(sd_folder, adapter_folder, tmp_path, capsys):
    """`generate --method isd` on Stable Diffusion: the runner hands ip_adapter to the loader (job_adapter), view
    prompts wrap the one reference in new ImagePrompts per step, and the job finishes with its reference saved."""
    import json

    from backend.cli import main

    ref = tmp_path / "ref.png"
    Image.fromarray((_reference(16).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(ref)
    out = tmp_path / "job"
    code = main(["generate", PROMPT, "--method", "isd", "--image", str(ref), "--model", str(sd_folder),
                 "--ip-adapter", str(adapter_folder), "--representation", "gaussians", "--quality", "draft",
                 "--steps", "2", "--out", str(out), "--device", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err[-2000:]
    record = json.loads((out / "job.json").read_text())
    assert record["settings"]["ip_adapter"] == str(adapter_folder) and record["reference"]["source"] == "image"
