"""The extension installed from the built zip into each supported Blender (build.BLENDERS, bpy wheels): what it registers, that every schema
setting is in the panel, and that enabling/disabling twice and closing the file leave no timer or socket."""

from __future__ import annotations

import json
import socket

import pytest

from test_addon_build import BUILD, addon_zip, blender_python_of, run_blender_script  # noqa: F401 - addon_zip is a fixture

REGISTERED = {"enabled": True, "scene_prop": True, "wm_prop": True, "panel": True, "operator": True,
              "timer": False, "session": False, "load_pre_handlers": 1}
RECORDED = {"python": "/opt/tbsd/.venv-gpu/bin/python", "working_dir": "/opt/tbsd",
            "arguments": "-m backend serve --device cuda"}
GONE = {"enabled": False, "scene_prop": False, "wm_prop": False, "panel": False, "operator": False,
        "timer": False, "session": False, "load_pre_handlers": 0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=list(BUILD.BLENDERS))
def report(request, addon_zip, tmp_path_factory):  # noqa: F811
    # Nothing listens at this address: the connection is real, the backend never answers.
    address = f"tcp://127.0.0.1:{free_port()}"
    tmp = tmp_path_factory.mktemp("life")
    # What `python build.py setup --gpu` records (shared/backend_config.py), at a private location.
    config = tmp / "backend.json"
    config.write_text(json.dumps(RECORDED))
    out = run_blender_script("addon_lifecycle.py", addon_zip, address, tmp_path=tmp,
                             env={"TBSD_STUDIO_CONFIG": str(config)}, python=blender_python_of(request.param))
    out["key"] = request.param
    return out


def test_start_uses_the_backend_setup_gpu_recorded_unless_the_preferences_name_a_python(report):
    assert report["backend_env_recorded"] == [RECORDED["python"], RECORDED["arguments"], RECORDED["working_dir"]]
    assert report["backend_env_own"] == ["/opt/own/python", "-m backend serve --device auto", "/opt/own"]


def test_installs_as_extension_with_pyzmq_from_its_wheel_and_vendored_shared(report):
    assert report["blender"].startswith(report["key"] + ".")
    assert report["installed"] == REGISTERED
    assert report["module"] == "bl_ext.user_default.tbsd_studio"
    assert report["prefs_id"] == report["module"]  # preferences keyed by __package__
    assert "/extensions/.local/" in report["zmq_file"].replace("\\", "/")
    assert report["vendored_shared"].replace("\\", "/").endswith("tbsd_studio/_vendor/shared/settings.py")
    assert not report["top_level_shared_imported"]


def test_every_schema_setting_is_in_the_panel_or_deliberately_hidden(report):
    schema = report["schema"]
    assert schema["problems"] == []
    assert schema["hidden"] == ["image_batch", "image_init_std", "image_lr", "image_steps", "reference_source",
                                "texture_fit"]
    assert len(schema["drawn"]) == schema["n_schema"] - len(schema["hidden"])


def test_the_panel_shows_each_representation_its_own_knobs_only(report):
    shown = report["schema"]["by_representation"]
    nerf_only = {"nerf_samples_per_ray", "nerf_grid_levels", "nerf_grid_log2_table", "nerf_normal_eps",
                 "lambda_orientation_start", "lambda_orientation_end", "lambda_sparsity"}
    gaussians_only = {"gaussian_points", "gaussian_max_points", "gaussian_antialiased", "gaussian_supersample",
                      "gaussian_opacity_reset", "lambda_translucency"}
    assert nerf_only <= set(shown["nerf"]) and not nerf_only & set(shown["gaussians"])
    assert gaussians_only <= set(shown["gaussians"]) and not gaussians_only & set(shown["nerf"])
    assert {"steps", "lr", "camera_fovy_min", "mesh_resolution"} <= set(shown["nerf"]) & set(shown["gaussians"])


def test_panel_is_in_its_own_sidebar_tab(report):
    assert report["panel_region"] == "UI" and report["panel_category"] == "TBSD"


def test_draw_code_uses_only_real_layout_calls_icons_operators_and_properties(report):
    assert report["ui_problems"] == []


def test_quality_preset_sets_the_fields_it_covers(report):
    assert report["draft"] == {"steps": 600, "texture_size": 256, "mesh_resolution": 64}
    assert report["standard"] == {"steps": 10000, "texture_size": 1024}
    # Gaussians run shorter (shared.settings.REPRESENTATION_PRESETS); switching keeps other edits.
    assert report["standard_gaussians"] == {"steps": 1500, "texture_size": 2048}
    assert report["standard_nerf_again"] == {"steps": 10000, "texture_size": 2048}
    assert report["typed_steps_after_switch"] == 777


def test_silent_backend_shows_lost_within_3_s(report):
    for cycle in report["cycles"]:
        conn = cycle["connected"]
        assert conn["timer_after_connect"] and conn["state_after_connect"] == "connecting"
        assert conn["state_after_wait"] == "lost" and conn["lost_after_s"] < 3.0
        assert conn["last_error"].startswith("Backend lost")


def test_enable_disable_twice_leaves_nothing_behind(report):
    assert len(report["cycles"]) == 2
    for cycle in report["cycles"]:
        after = cycle["after_disable"]
        assert {k: after[k] for k in GONE} == GONE
        assert not after["old_timer"] and not after["old_session"] and after["socket_closed"]
        assert after["timer_errors"] == []
        assert cycle["after_enable"] == REGISTERED
    assert report["final"] == GONE


def test_closing_the_file_stops_the_timer_and_closes_the_socket(report):
    after = report["after_file_load"]
    assert not after["timer"] and not after["session"] and after["socket_closed"]
    assert after["enabled"]
