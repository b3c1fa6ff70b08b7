"""shared/protocol.py and the server's pure helpers on their own: no process, no socket."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from server_support import ROOT, mutated_messages
from shared import protocol as P


def test_round_trip_keeps_every_dtype_shape_and_value():
    rng = np.random.default_rng(0)
    arrays = {
        "u8": rng.integers(0, 255, (4, 5, 3), dtype=np.uint8),
        "i32": rng.integers(-9, 9, (7, 3), dtype=np.int32),
        "u32": rng.integers(0, 9, (2,), dtype=np.uint32),
        "f32": rng.standard_normal((3, 3)).astype(np.float32),
        "f16": rng.standard_normal((2, 2, 2, 2)).astype(np.float16),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }
    frames = P.encode({"type": "mesh", "job": "j1", "step": 3, "final": False}, arrays)
    assert len(frames) == 1 + len(arrays)
    header = json.loads(frames[0])
    assert header["v"] == P.VERSION
    assert [d["name"] for d in header["arrays"]] == list(arrays)
    m = P.decode(frames)
    assert m.type == "mesh" and m.job == "j1" and m["step"] == 3
    for name, a in arrays.items():
        assert m.arrays[name].dtype == a.dtype and m.arrays[name].shape == a.shape
        np.testing.assert_array_equal(m.arrays[name], a)


def test_big_endian_input_is_sent_little_endian():
    a = np.arange(4, dtype=">f4")
    frames = P.encode({"type": "ping"}, {"a": a})
    assert frames[1] == np.arange(4, dtype="<f4").tobytes()


def test_encode_refuses_dtypes_off_the_whitelist():
    with pytest.raises(P.ProtocolError, match="float64"):
        P.encode({"type": "ping"}, {"a": np.zeros(2)})


@pytest.mark.parametrize("frames, code, words", [
    ([], "malformed", "empty"),
    ([b"\xff\xfe"], "malformed", "utf-8"),
    ([b"{"], "malformed", "json"),
    ([b"[1]"], "malformed", "json object"),
    ([b'{"type": "ping"}'], "version", "version 1"),
    ([b'{"v": 2, "type": "ping"}'], "version", "version 2"),
    ([b'{"v": 1}'], "bad_field", "'type'"),
    ([b'{"v": 1, "type": "ping", "id": "../x"}'], "bad_field", "'id'"),
    ([b'{"v": 1, "type": "ping", "t": NaN}'], "malformed", "nan"),
    ([b'{"v": 1, "type": "ping", "arrays": [{"name": "a", "dtype": "float64", "shape": [1]}]}', b"\0" * 8],
     "bad_field", "float64"),
    ([b'{"v": 1, "type": "ping", "arrays": [{"name": "a", "dtype": "uint8", "shape": [4]}]}', b"\0" * 3],
     "malformed", "3 bytes"),
    ([b'{"v": 1, "type": "ping"}', b"stray"], "malformed", "1 array frames"),
    ([b'{"v": 1, "type": "ping", "arrays": [{"name": "a", "dtype": "uint8", "shape": [1, 1, 1, 1, 1]}]}', b"\0"],
     "bad_field", "5 dimensions; at most 4"),
    # Shapes numpy cannot build, or that no message could carry: a zero dimension empties the frame, so the
    # byte count alone does not catch them.
    ([b'{"v": 1, "type": "ping", "arrays": [{"name": "a", "dtype": "uint8", "shape": [0, 1000000000000000000000000000000]}]}', b""],
     "bad_field", "non-zero dimensions multiply to 1000000000000000000000000000000 uint8 items; at most"),
    ([b'{"v": 1, "type": "ping", "arrays": [{"name": "a", "dtype": "float32", "shape": [4611686018427387904, 0]}]}', b""],
     "bad_field", "shape [4611686018427387904, 0] is too large"),
    ([b'{"v": 1, "type": "ping", "arrays": [{"name": "a", "dtype": "int32", "shape": [0, 1099511627776, 1099511627776]}]}', b""],
     "bad_field", "too large"),
    ([b'{"v": 1, "type": "ping", "arrays": [{"name": "a", "dtype": "uint8", "shape": [0, -1]}]}', b""],
     "bad_field", "dimension 1 is -1; each dimension must be a non-negative integer"),
    ([b'{"v": 1, "type": "ping", "arrays": [{"name": "a", "dtype": "uint8", "shape": [2, 1.5]}]}', b"\0\0\0"],
     "bad_field", "dimension 1 is 1.5"),
    ([b'{"v": 1, "type": "ping", "arrays": [{"name": "a", "dtype": "uint8", "shape": [true]}]}', b"\0"],
     "bad_field", "dimension 0 is True"),
    ([b'{"v": 1, "type": "ping", "arrays": [{"name": "a", "dtype": "uint8", "shape": "3"}]}', b"\0\0\0"],
     "bad_field", "shape must be a list"),
])
def test_decode_names_the_problem(frames, code, words):
    with pytest.raises(P.ProtocolError) as info:
        P.decode(frames)
    assert info.value.code == code
    assert words.lower() in info.value.message.lower()


def test_ten_thousand_mutated_messages_decode_or_get_a_named_protocol_error():
    # The server answers any other exception from decoding with "internal"; here no exception but
    # ProtocolError may leave decode and check_fields, and every refusal has a client-side code and a text.
    refused = 0
    for i, frames in enumerate(mutated_messages(random.Random(23), 10_000)):
        try:
            P.check_fields(P.decode(frames, P.MAX_SERVER_INBOUND_BYTES), "c2s")
        except P.ProtocolError as exc:
            assert exc.code in P.ERROR_CODES and exc.code != "internal" and exc.message, (i, frames[0][:200])
            refused += 1
        except Exception as exc:
            raise AssertionError(f"case {i}: {type(exc).__name__}: {exc} from {[f[:200] for f in frames]}") from exc
    assert refused > 9000  # the mutations do break messages; a generator gone tame would check little


def test_decode_enforces_the_size_limit():
    frames = P.encode({"type": "ping"}, {"a": np.zeros(100, dtype=np.uint8)})
    with pytest.raises(P.ProtocolError, match="at most 50"):
        P.decode(frames, max_bytes=50)


def test_check_fields_per_type():
    ok = P.decode(P.encode({"type": "submit", "prompt": "a red cube", "settings": {}}))
    P.check_fields(ok, "c2s")
    cases = [
        ({"type": "welcome"}, "unknown_type", "welcome"),  # a server -> client type sent to the server
        ({"type": "submit"}, "bad_field", "missing required field 'prompt'"),
        ({"type": "submit", "prompt": 3}, "bad_field", "'prompt' must be a string"),
        ({"type": "cancel", "job": True}, "bad_field", "'job' must be a string"),
        ({"type": "ping", "t": True}, "bad_field", "'t' must be a number"),
        ({"type": "list", "extra": 1}, "bad_field", "unknown field(s) 'extra'"),
    ]
    for header, code, words in cases:
        with pytest.raises(P.ProtocolError) as info:
            P.check_fields(P.decode(P.encode(header)), "c2s")
        assert info.value.code == code and words in info.value.message, info.value.message


def test_stream_options_and_prompt_checks():
    assert P.check_stream(None) == P.STREAM_DEFAULTS
    assert P.check_stream({"mesh_every": 10})["mesh_every"] == 10
    with pytest.raises(P.ProtocolError, match="mesh_every"):
        P.check_stream({"mesh_every": -1})
    with pytest.raises(P.ProtocolError, match="unknown stream option 'x'"):
        P.check_stream({"x": 1})
    with pytest.raises(P.ProtocolError, match="empty"):
        P.check_prompt("  ", 500)
    with pytest.raises(P.ProtocolError, match="501 characters"):
        P.check_prompt("x" * 501, 500)


def test_protocol_module_imports_without_zmq_or_torch():
    # Blender's Python imports shared/protocol.py; it must not pull the backend's heavy or optional packages.
    code = ("import sys; sys.modules['zmq'] = None; sys.modules['torch'] = None; "
            "import shared.protocol as p; print(p.VERSION)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == str(P.VERSION), out.stderr


@pytest.mark.parametrize("endpoint, loopback", [
    ("tcp://127.0.0.1:5555", True), ("tcp://localhost:5555", True), ("tcp://[::1]:5555", True),
    ("tcp://127.0.0.2:1", True), ("ipc:///tmp/x", True), ("inproc://x", True),
    ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False), ("tcp://192.168.1.4:5555", False),
    ("tcp://eth0:5555", False), ("tcp://example.com:5555", False),
])
def test_loopback_detection(endpoint, loopback):
    from backend.server.security import BindRefused, check_bind, is_loopback

    assert is_loopback(endpoint) is loopback
    if not loopback:
        with pytest.raises(BindRefused, match="curve-secret-key"):
            check_bind(endpoint, None)


def test_glb_reader_returns_blender_axes_and_uvs(tmp_path):
    from backend.export.mesh import Mesh
    from backend.export.writers import write_glb
    from backend.export.meshfile import read_glb

    mesh = Mesh(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32),
                np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int32))
    uvs = np.array([[0.1, 0.1], [0.9, 0.1], [0.1, 0.9], [0.9, 0.9]], np.float32)
    texture = np.zeros((8, 8, 3), np.uint8)
    texture[:4] = (255, 0, 0)  # top half red: v near 1 must sample it
    write_glb(tmp_path / "m.glb", mesh, uvs, texture)
    a = read_glb(tmp_path / "m.glb")
    np.testing.assert_allclose(a["vertices"], mesh.vertices, atol=1e-6)  # +Z up again, as written
    np.testing.assert_array_equal(a["faces"], mesh.faces)
    np.testing.assert_allclose(a["uvs"], uvs, atol=1e-6)
    np.testing.assert_array_equal(a["texture"], texture)
    assert a["colours"][2].tolist() == [255, 0, 0] and a["colours"][0].tolist() == [0, 0, 0]
