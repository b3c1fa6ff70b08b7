"""The add-on's IP-Adapter drop-down (tests/blender/addon_adapters.py, the default Blender's bpy wheel) against a real
backend started from Blender: it offers none first, then what hello's capabilities.ip_adapters sent (an adapter
folder in the preferences' models folder), writes the job's `ip_adapter`, and is drawn only for isd on a Stable
Diffusion model."""

from __future__ import annotations

import sys

from test_addon_build import REPO, addon_zip, run_blender_script  # noqa: F401 - addon_zip is a fixture
from test_addon_generate import free_port


def test_the_ip_adapter_drop_down_offers_what_hello_lists(addon_zip, tmp_path):  # noqa: F811
    models = tmp_path / "models"
    # The layout the server lists (backend/ip_adapter_source.py local_adapters): the listing reads no weights.
    adapter = models / "my-ip"
    (adapter / "image_encoder").mkdir(parents=True)
    for name in ("ip-adapter.safetensors", "image_encoder/config.json", "image_encoder/model.safetensors"):
        (adapter / name).write_bytes(b"")
    (models / "no-encoder").mkdir()
    (models / "no-encoder" / "ip-adapter.safetensors").write_bytes(b"")  # incomplete: not offered
    results = tmp_path / "results"
    results.mkdir()
    report = run_blender_script("addon_adapters.py", addon_zip, sys.executable, REPO, results, free_port(), models,
                                tmp_path=tmp_path, timeout=300)
    from backend.ip_adapter_source import local_adapters

    listed = local_adapters(models)  # what this checkout's hello sends (world-sd-ip too, once its files are here)
    assert report["state_adapters"] == listed and listed[-1]["name"] == str(adapter.resolve())
    assert report["items_before_connect"] == ["NONE"]
    assert [item[0] for item in report["items"]] == ["NONE", *(a["name"] for a in listed)]
    assert report["items"][-1][1] == "my-ip"
    assert report["after_choice"] == report["sent_after_choice"] == str(adapter.resolve())
    assert report["after_none"] == ""  # None is the empty setting
    assert report["choice_after_typing"] == "/typed/adapter"  # a typed value is offered too, and chosen
    assert report["items_after_typing"][-1] == "/typed/adapter"
    assert report["shown"] == {"isd on world-sd": ["ip_adapter"], "isd on procedural": [], "tbsd on world-sd": []}
    assert not report["in_sections"]  # drawn in the image-prompt box, not again among the settings
