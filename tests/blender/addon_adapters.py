"""The IP-Adapter drop-down against a real backend process: what hello offers is what the panel offers.

    $TBSD_BLENDER_PYTHON tests/blender/addon_adapters.py ZIP BACKEND_PYTHON REPO RESULTS_DIR PORT MODELS_DIR

The add-on's "Start local backend" runs the backend with the preferences' models folder (MODELS_DIR, holding an
IP-Adapter folder); once connected, the script reports hello's ip_adapters as the panel state holds them, the
drop-down's items, the `ip_adapter` field after a choice and after "None", and whether the panel shows the drop-down
for isd on a Stable Diffusion model, isd on the procedural prior and tbsd. One JSON report on stdout.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import addon_harness as h  # noqa: E402

import bpy  # noqa: E402


def main(argv: list[str]) -> dict:
    zip_path, backend_python, repo, results_dir, port, models_dir = argv
    report: dict = {"blender": bpy.app.version_string}
    h.install(zip_path)
    conn, props_module, schema_ui = h.submodule("connection"), h.submodule("props"), h.submodule("schema_ui")
    state = bpy.context.window_manager.tbsd_state
    h.point_at_local_backend(backend_python, repo, port, results_dir, models_dir)
    props = bpy.context.scene.tbsd
    report["items_before_connect"] = [item[0] for item in props_module._adapter_items(props, bpy.context)]

    assert bpy.ops.tbsd.backend_start() == {"FINISHED"}
    t0 = time.monotonic()
    while state.connection != "connected":
        if time.monotonic() - t0 > 120:
            raise AssertionError(f"no welcome after 120 s: {state.connection} {state.last_error!r}")
        conn._tick()
        time.sleep(0.05)

    report["state_adapters"] = [{"name": a.name, "kind": a.kind, "label": a.label} for a in state.ip_adapters]
    report["items"] = [list(item) for item in props_module._adapter_items(props, bpy.context)]
    offered = report["items"][-1][0]
    props.ip_adapter_choice = offered  # the drop-down writes the job's `ip_adapter` field
    report["after_choice"] = props.ip_adapter
    props.method, props.model = "isd", "world-sd"
    report["sent_after_choice"] = props_module.job_settings(props).get("ip_adapter")
    props.ip_adapter_choice = props_module.NO_ADAPTER
    report["after_none"] = props.ip_adapter
    props.ip_adapter = "/typed/adapter"
    report["choice_after_typing"] = props.ip_adapter_choice
    report["items_after_typing"] = [item[0] for item in props_module._adapter_items(props, bpy.context)]
    report["shown"] = {f"{method} on {model}": schema_ui.adapter_settings(method, model)
                       for method, model in (("isd", "world-sd"), ("isd", "procedural"), ("tbsd", "world-sd"))}
    report["in_sections"] = any("ip_adapter" in names for _, names in schema_ui.sections("isd", "nerf"))
    return report


if __name__ == "__main__":
    h.run(main)
