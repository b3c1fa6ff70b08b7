"""Where an ISD job's reference image comes from: a file (--image, read safely within stated limits), a sample of
the prior, or a submit's array frame (checked at admission, saved in the job's folder). Wherever it comes from, the
pixels the method reads are the ones written beside the results and recorded in job.json and the checkpoint."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.cli import main
from backend.jobs.admission import Admission, Refused
from backend.jobs.runner import JobPlan, JobRun, fixed_prior
from backend.priors.procedural.prior import ProceduralPrior
from backend.reference import REFERENCE_FILE, Reference, read_reference_file
from backend.train import Trainer, load_checkpoint
from shared.reference_image import (
    MAX_REFERENCE_PIXELS,
    MAX_REFERENCE_SIDE,
    ReferenceImageError,
    check_reference_arrays,
)
from shared.settings import SettingsError, validate

ROOT = Path(__file__).resolve().parents[1]
# A run that takes seconds: the procedural prior at 16 px, a few Gaussian steps, a small export.
TINY = {"quality": "draft", "representation": "gaussians", "steps": 3, "procedural_resolution": 16,
        "render_res_start": 16, "render_res_end": 16, "gaussian_points": 200, "camera_bank_size": 2,
        "mesh_resolution": 32, "texture_size": 64, "preview_every": 0, "checkpoint_every": 0, "decimate_faces": 2000}


def blue_cube(size: int = 64) -> np.ndarray:
    """A picture of the world's blue cube from the front camera, uint8 [H, W, 3]."""
    import torch

    from backend.priors.procedural import world
    from backend.scene.cameras import front_view

    image = world.compose(world.render_shapes(front_view(1), size), (world.Component("cube", "blue"),))[0, 0]
    return (image.permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8) if isinstance(
        image, torch.Tensor) else image


def write(path: Path, image: Image.Image, fmt: str = "PNG") -> Path:
    image.save(path, format=fmt)
    return path


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def test_png_and_jpeg_files_read_as_rgb(tmp_path):
    pixels = blue_cube()
    png = read_reference_file(write(tmp_path / "ref.png", Image.fromarray(pixels)))
    assert png.dtype == np.uint8 and np.array_equal(png, pixels)
    jpeg = read_reference_file(write(tmp_path / "ref.jpg", Image.fromarray(pixels), "JPEG"))
    assert jpeg.shape == (64, 64, 3) and np.abs(jpeg.astype(int) - pixels).mean() < 4
    # The format is read from the content, not the name.
    assert np.array_equal(read_reference_file(write(tmp_path / "named.jpg", Image.fromarray(pixels))), pixels)


def test_transparency_lies_on_mid_grey_and_grey_and_16_bit_files_read(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, :15, 3] = 255  # left half opaque red, right half transparent
    out = read_reference_file(write(tmp_path / "a.png", Image.fromarray(rgba, "RGBA")))
    assert out.shape == (20, 30, 3)
    assert (out[:, :15] == [255, 0, 0]).all() and (out[:, 15:] == 128).all()
    grey16 = (np.arange(20 * 20, dtype=np.uint16).reshape(20, 20) * 150)
    out = read_reference_file(write(tmp_path / "g16.png", Image.fromarray(grey16)))
    assert out.shape == (20, 20, 3) and int(out.max()) == (int(grey16.max()) >> 8)


@pytest.mark.parametrize("case, words", [
    ("missing", "no such file"),
    ("text", "not a PNG or JPEG"),
    ("gif", "not a PNG or JPEG"),
    ("truncated", "cannot be decoded"),
    ("too_wide", "allowed: sides 16-4096"),
    ("too_many_pixels", "at most 4,194,304 pixels"),
    ("too_small", "allowed: sides 16-4096"),
])
def test_bad_files_are_refused_naming_the_file_and_what_is_allowed(tmp_path, case, words):
    path = tmp_path / f"{case}.png"
    if case == "text":
        path.write_text("not an image")
    elif case == "gif":
        Image.fromarray(blue_cube()).save(path, format="GIF")
    elif case == "truncated":
        buffer = io.BytesIO()
        Image.fromarray(blue_cube()).save(buffer, format="PNG")
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    elif case == "too_wide":
        Image.new("RGB", (MAX_REFERENCE_SIDE + 1, 16)).save(path)
    elif case == "too_many_pixels":
        Image.new("L", (2049, 2048)).save(path)  # small on disk, refused from its header
    elif case == "too_small":
        Image.new("RGB", (15, 64)).save(path)
    with pytest.raises(ReferenceImageError) as err:
        read_reference_file(path)
    assert str(path) in str(err.value) and words in str(err.value)


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    """A PNG header may claim any size: it is refused from the header, never decoded."""
    path = tmp_path / "bomb.png"
    Image.new("1", (4000, 4000)).save(path)  # a few kB, 16 M pixels
    assert path.stat().st_size < 100_000
    with pytest.raises(ReferenceImageError, match="4000 x 4000"):
        read_reference_file(path)


# ---------------------------------------------------------------------------------------------
# The wire's array and admission
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("array, words", [
    (np.zeros((32, 32, 3), np.float32), "dtype float32; allowed: uint8"),
    (np.zeros((32, 32, 4), np.uint8), "must be [H, W, 3]"),
    (np.zeros((32, 32), np.uint8), "must be [H, W, 3]"),
    (np.zeros((8, 32, 3), np.uint8), "allowed: sides 16-4096"),
    (np.zeros((2048, 2049, 3), np.uint8), f"at most {MAX_REFERENCE_PIXELS:,} pixels"),
])
def test_a_bad_reference_array_is_bad_field_naming_it(array, words):
    from shared.protocol import ProtocolError

    with pytest.raises(ProtocolError) as err:
        check_reference_arrays({"reference": array})
    assert err.value.code == "bad_field" and "array 'reference'" in err.value.message and words in err.value.message
    assert check_reference_arrays({}) is None
    assert check_reference_arrays({"reference": np.zeros((16, 4096, 3), np.uint8)}).pixels.shape == (16, 4096, 3)


def test_admission_fits_the_reference_to_the_method_and_its_source():
    admission = Admission()
    ok = {"reference": blue_cube(32)}
    given = {"method": "isd"}
    settings = admission.admit("a cube", given)
    assert settings["reference_source"] == "sample"
    assert admission.reference(ok, given, settings).pixels.shape == (32, 32, 3)
    assert settings["reference_source"] == "image"  # a sent image is the job's reference
    assert admission.reference({}, given, admission.admit("a cube", given)) is None  # drawn from the prior
    with pytest.raises(Refused) as err:
        admission.admit("a cube", {"method": "isd", "model": "world-sd"})
    # Stable Diffusion reads an image prompt through an IP-Adapter the job must name (tests/test_ip_adapter.py)
    assert err.value.code == "settings" and "set ip_adapter" in err.value.message and "world-sd-ip" in err.value.message
    cases = [
        ({"method": "tbsd"}, ok, "bad_field", "method 'tbsd' reads none"),
        ({"method": "isd", "reference_source": "sample"}, ok, "settings", "drop one of them"),
        ({"method": "isd", "reference_source": "image"}, {}, "settings", "carries no 'reference' array"),
        ({"method": "isd"}, {"reference": np.zeros((4, 4, 3), np.uint8)}, "bad_field", "allowed: sides"),
    ]
    for given, arrays, code, words in cases:
        with pytest.raises(Refused) as err:
            admission.reference(arrays, given, admission.admit("a cube", given))
        assert err.value.code == code and words in err.value.message, (given, err.value.message)


# ---------------------------------------------------------------------------------------------
# A job's reference: given or drawn, kept beside the results, in job.json and the checkpoint
# ---------------------------------------------------------------------------------------------


def test_a_given_reference_is_saved_recorded_checkpointed_and_selects_its_mode(tmp_path):
    prior = ProceduralPrior(resolution=16)
    given = write(tmp_path / "blue.png", Image.fromarray(blue_cube()))
    settings = validate({**TINY, "method": "isd", "reference_source": "image", "checkpoint_every": 3})
    plan = JobPlan("a cube", settings, tmp_path / "job", reference=given, reference_name="blue.png")
    run = JobRun(plan, __import__("torch").device("cpu"), fixed_prior(prior))
    trainer = run.prepare()
    saved = np.asarray(Image.open(tmp_path / "job" / REFERENCE_FILE))
    assert np.array_equal(saved, blue_cube()) and np.array_equal(trainer.reference.pixels, saved)
    run.train()
    record = run.finish().record
    ref = record["reference"]
    assert ref["file"] == REFERENCE_FILE and ref["source"] == "image" and ref["given"] == "blue.png"
    assert ref["mode"] == "a blue cube" and list(ref["weights"])[0] == "a blue cube" and ref["size"] == [64, 64]
    assert record["figures"]["reference_mode"] == "a blue cube" and "in_reference_mode" in record["figures"]
    assert json.loads((tmp_path / "job" / "job.json").read_text())["reference"] == ref
    # The checkpoint holds the reference (uint8 pixels), so a resumed or refined run reads the same one.
    state = load_checkpoint(tmp_path / "job" / "checkpoint.pt")
    assert np.array_equal(state["reference"].numpy(), saved) and state["reference_source"] == "image"
    again = Trainer.from_checkpoint(tmp_path / "job" / "checkpoint.pt", prior)
    assert np.array_equal(again.reference.pixels, saved) and again.reference.given_name == "blue.png"


def test_a_drawn_reference_is_a_seeded_sample_and_other_methods_take_none(tmp_path):
    prior = ProceduralPrior(resolution=16)
    a = Trainer(prior, "a cube", validate({**TINY, "method": "isd", "seed": 5})).reference
    b = Trainer(prior, "a cube", validate({**TINY, "method": "isd", "seed": 5})).reference
    c = Trainer(prior, "a cube", validate({**TINY, "method": "isd", "seed": 6})).reference
    assert a.source == "sample" and np.array_equal(a.pixels, b.pixels) and not np.array_equal(a.pixels, c.pixels)
    assert Trainer(prior, "a cube", validate({**TINY, "method": "sds"})).reference is None
    with pytest.raises(SettingsError, match="reads no reference image"):
        Trainer(prior, "a cube", validate({**TINY, "method": "sds"}), reference=Reference(a.pixels, "image"))
    with pytest.raises(SettingsError, match="given no reference image"):
        Trainer(prior, "a cube", validate({**TINY, "method": "isd", "reference_source": "image"}))

    class TextOnly(ProceduralPrior):
        supports_image_prompts = False

    from backend.priors.base import PriorError

    with pytest.raises(PriorError, match="needs a prior with an image prompt"):  # refused when the job starts
        Trainer(TextOnly(resolution=16), "a cube", validate({**TINY, "method": "isd"}))


def test_cli_image_flag_errors_name_what_is_wrong(tmp_path, capsys):
    """In process (the same ``main`` the command runs), so the four refusals cost no interpreter start each."""
    good = write(tmp_path / "blue.png", Image.fromarray(blue_cube()))
    (tmp_path / "bad.png").write_text("no")
    cases = [
        (["generate", "a cube", "--method", "sds", "--image", str(good)], "method 'sds' reads none"),
        (["generate", "a cube", "--method", "isd", "--image", str(good), "--reference-source", "sample"],
         "drop one of them"),
        (["generate", "a cube", "--method", "isd", "--image", str(tmp_path / "bad.png")], "not a PNG or JPEG"),
        (["generate", "a cube", "--method", "isd", "--reference-source", "image"], "given no reference image"),
    ]
    for args, words in cases:
        code = main([*args, "--out", str(tmp_path / "out"), "--device", "cpu", "--quality", "draft", "--steps", "1",
                     "--procedural-resolution", "16", "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and words in err, (args, err[-500:])
    assert not (tmp_path / "out" / "job.json").exists()


def test_cli_image_experiment_with_a_reference_writes_it_beside_the_result(tmp_path, capsys):
    good = write(tmp_path / "blue.png", Image.fromarray(blue_cube()))
    out = tmp_path / "isd.png"
    code = main(["image", "a cube", "--method", "isd", "--image", str(good), "--out", str(out), "--steps", "60",
                 "--procedural-resolution", "16", "--isd-noise-weight", "0.3", "--device", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err[-2000:]
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["reference"]["file"] == "isd_reference.png" and record["reference"]["given"] == "blue.png"
    assert np.array_equal(np.asarray(Image.open(tmp_path / "isd_reference.png")), blue_cube())
    assert record["figures"]["reference_mode"] == "a blue cube"
    assert record["figures"]["landed"] == "a blue cube" and record["figures"]["in_reference_mode"] is True


def test_a_reference_sent_with_a_submit_is_checked_saved_and_used_by_a_real_server(tmp_path):
    from server_support import QUIET_STREAM, ServerProcess, client, run_to_end, wait_for

    sent = blue_cube(48)[:, 8:40].copy()  # not square: the prior reads its centred square
    with ServerProcess(tmp_path / "results") as server:
        c = client(server, "isd", hello=False)
        c.send_hello(name="pytest")
        limits = wait_for(c, lambda m: m.type == "welcome", 30)["capabilities"]["limits"]
        assert (limits["min_reference_side"], limits["max_reference_side"], limits["max_reference_pixels"]) == \
            (16, MAX_REFERENCE_SIDE, MAX_REFERENCE_PIXELS)
        rid = c.send_submit("a cube", {**TINY, "method": "isd"}, QUIET_STREAM, reference=sent)
        accepted = wait_for(c, lambda m: m.get("id") == rid, 30)
        assert accepted.type == "accepted", accepted.header
        seen = run_to_end(c, accepted.job, 300)
        assert seen[-1].type == "finished", [m.header for m in seen if m.type == "error"]
        folder = server.results / accepted.job
        assert np.array_equal(np.asarray(Image.open(folder / REFERENCE_FILE)), sent)
        record = json.loads((folder / "job.json").read_text())
        assert record["settings"]["reference_source"] == "image" and record["reference_image"] == REFERENCE_FILE
        assert record["reference"]["source"] == "image" and record["reference"]["mode"] == "a blue cube"
        # Refused before queueing, naming the array and what is allowed; the server keeps serving.
        for settings, array, code, words in (
                ({"method": "isd"}, np.zeros((8, 8, 3), np.uint8), "bad_field", "allowed: sides 16-4096"),
                ({"method": "isd"}, np.zeros((32, 32, 3), np.float32), "bad_field", "allowed: uint8"),
                ({"method": "sds"}, sent, "bad_field", "reads none"),
                ({"method": "isd", "reference_source": "image"}, None, "settings", "no 'reference' array")):
            rid = c.send_submit("a cube", {**TINY, **settings}, QUIET_STREAM, reference=array)
            refused = wait_for(c, lambda m: m.get("id") == rid, 30)
            assert refused.type == "error" and refused["code"] == code and words in refused["message"], \
                refused.header
        c.close()


def test_an_images_float_pixels_become_the_arrays_rows_top_down_alpha_on_grey_and_within_limits():
    """What the add-on sends from a Blender image (shared/reference_image.py reference_from_pixels)."""
    from shared.reference_image import reference_from_pixels

    h, w = 20, 30
    rgba = np.zeros((h, w, 4), np.float32)  # bottom-up, as Image.pixels
    rgba[0, :, 0] = 1.0  # the bottom row red
    rgba[..., 3] = 1.0
    rgba[:, w // 2:, 3] = 0.0  # the right half transparent
    out = reference_from_pixels(rgba.ravel(), w, h, 4)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    assert (out[-1, : w // 2] == [255, 0, 0]).all() and (out[0, : w // 2] == 0).all()  # rows flipped
    assert (out[:, w // 2:] == 128).all()
    # A linear (float) image is encoded as displayed: 0.2140 linear is sRGB 0.5.
    grey = reference_from_pixels(np.full(h * w * 3, 0.2140, np.float32), w, h, 3, linear=True)
    assert abs(int(grey[0, 0, 0]) - 128) <= 1
    # Too many pixels: shrunk by a whole factor with a box average; too small: refused.
    big = reference_from_pixels(np.ones(3000 * 2000, np.float32), 3000, 2000, 1)
    assert big.shape == (1000, 1500, 3) and (big == 255).all()
    with pytest.raises(ReferenceImageError, match="allowed: sides"):
        reference_from_pixels(np.ones(8 * 8 * 4, np.float32), 8, 8, 4)
