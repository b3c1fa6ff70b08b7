"""The built zip on every Blender the extension supports (build.BLENDERS: 4.2 LTS, 4.5 LTS, 5.0 and the newest
5.x on Python 3.13), through tests/blender/addon_smoke.py: installs, registers its panel and the schema's
fields, imports zmq from the wheel for that Blender's Python, enables/disables twice leaving nothing behind,
builds a textured object, and raises no deprecation warning from its own code.

Every Blender also runs the lifecycle tests (test_addon_lifecycle.py), 4.5 and 5.3 the generate tests against a
real backend, and the default (4.5) the rest of the add-on suite; this split keeps CI in its time budget (smoke
2-4 s, lifecycle ~11 s per Blender; generate ~1 min per Blender on 2 cores).
"""

from __future__ import annotations

import time

import pytest

from test_addon_build import BUILD, MANIFEST, addon_zip, blender_python_of, run_blender_script  # noqa: F401
from test_addon_lifecycle import GONE, REGISTERED

PYZMQ = BUILD._wheel_tags(MANIFEST["wheels"][0].removeprefix("./wheels/"))[1]


@pytest.fixture(scope="module", params=list(BUILD.BLENDERS))
def smoke(request, addon_zip, tmp_path_factory):  # noqa: F811
    key = request.param
    python = blender_python_of(key)
    t0 = time.monotonic()
    report = run_blender_script("addon_smoke.py", addon_zip, tmp_path=tmp_path_factory.mktemp(f"smoke-{key}"),
                                python=python)
    print(f"add-on smoke test on Blender {report['blender']}: {time.monotonic() - t0:.1f} s")
    return key, report


def test_runs_on_the_blender_and_python_it_is_meant_for(smoke):
    key, report = smoke
    assert report["blender"].startswith(key + ".")
    assert report["python"] == "{}.{}".format(*BUILD.BLENDERS[key].python)


def test_installs_registers_and_imports_zmq_from_its_wheel(smoke):
    _, report = smoke
    assert report["installed"] == REGISTERED
    assert "/extensions/.local/" in report["zmq_file"].replace("\\", "/")
    assert f"python{report['python']}" in report["zmq_file"]  # the wheel for this Blender's Python
    assert report["pyzmq_version"] == PYZMQ
    assert report["schema_problems"] == []


def test_enable_disable_twice_leaves_nothing_behind(smoke):
    _, report = smoke
    assert [c["after_disable"] for c in report["cycles"]] == [GONE, GONE]
    assert [c["after_enable"] for c in report["cycles"]] == [REGISTERED, REGISTERED]
    assert report["final"] == GONE


def test_scene_builder_makes_a_textured_principled_material(smoke):
    _, report = smoke
    obj = report["object"]
    assert obj["material"]["base_color_from"] == "TEX_IMAGE"
    assert obj["image"]["packed"] and obj["uv_red_above"] and obj["uv_blue_below"]


def test_no_deprecation_warning_from_the_addons_code(smoke):
    key, report = smoke
    assert report["addon_warnings"] == [], report["addon_warnings"]
    # The control: where Blender deprecates Material.use_nodes (5.0 on), the recorder does see that warning,
    # so an unguarded use_nodes in the add-on would have failed the assertion above.
    if tuple(map(int, key.split("."))) >= (5, 0):
        assert any("use_nodes" in w for w in report["use_nodes_warns"]), report["use_nodes_warns"]
