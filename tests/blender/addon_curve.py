"""The add-on's CURVE preferences against a real CURVE backend: the authorised key pair connects (welcome,
device shown), an unauthorised pair and a plain connection never get an answer and the panel says lost.

    $TBSD_BLENDER_PYTHON tests/blender/addon_curve.py ZIP ADDRESS SERVER_KEY_FILE CLIENT_KEY_SECRET_FILE
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import addon_harness as h  # noqa: E402

import bpy  # noqa: E402


def attempt(conn, server_key: str, client_keys: str, timeout: float = 8.0) -> dict:
    prefs = bpy.context.preferences.addons[h.MODULE].preferences
    prefs.curve_server_key, prefs.curve_client_keys = server_key, client_keys
    state = bpy.context.window_manager.tbsd_state
    state.last_error = ""
    try:
        result = bpy.ops.tbsd.connect()
    except RuntimeError as exc:  # an operator that reports an ERROR raises in background Blender
        result = {"CANCELLED"}
        state.last_error = state.last_error or str(exc)
    t0 = time.monotonic()
    while state.connection not in ("connected", "lost") and time.monotonic() - t0 < timeout:
        conn._tick()
        time.sleep(0.05)
    return {"operator": sorted(result), "connection": state.connection, "device": state.device,
            "last_error": state.last_error, "seconds": time.monotonic() - t0}


def main(argv: list[str]) -> dict:
    zip_path, address, server_key_file, client_secret_file = argv
    h.install(zip_path)
    conn = h.submodule("connection")
    bpy.context.preferences.addons[h.MODULE].preferences.address = address
    import zmq.auth

    stranger_dir = tempfile.mkdtemp()
    _, stranger_secret = zmq.auth.create_certificates(stranger_dir, "stranger")
    server_public, _ = zmq.auth.load_certificate(server_key_file)
    report = {
        "authorised_file": attempt(conn, server_key_file, client_secret_file),
        "authorised_z85": attempt(conn, server_public.decode(), client_secret_file),
        "stranger": attempt(conn, server_key_file, stranger_secret),
        "plain": attempt(conn, "", ""),
    }
    # A public-only file where the secret is needed is refused in words, before any socket is made.
    report["public_only"] = attempt(conn, server_key_file, server_key_file, timeout=0.5)
    report["timer_errors"] = list(conn.timer_errors)
    h.disable()
    return report


if __name__ == "__main__":
    h.run(main)
