"""The wire protocol between the backend server and its clients (the Blender add-on, tests, other tools).

A message is a ZeroMQ multipart message: one UTF-8 JSON *header* frame, then one raw frame per array the
header describes (``"arrays": [{"name", "dtype", "shape"}, ...]``, in frame order, C order, little endian).
Nothing is ever pickled. docs/PROTOCOL.md is the normative description; this module is its executable form.

This module imports only the standard library and (lazily, for arrays) numpy, because Blender's bundled
Python imports it too. ``encode`` and ``decode`` are pure functions; ``check_fields`` validates a decoded
header against the per-type field table ``MESSAGES``. The zmq client helper lives in shared/client.py.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

VERSION = 1

# Limits. Inbound to the server is bounded by the largest mesh a texture job's submit may carry (shared/texture_mesh.py:
# 500k vertices with UVs and 500k faces are 16,000,000 bytes); outbound carries meshes and textures, so a client
# accepts much more.
MAX_HEADER_BYTES = 64 * 1024
MAX_SERVER_INBOUND_BYTES = 16 * 1024 * 1024
MAX_CLIENT_INBOUND_BYTES = 512 * 1024 * 1024
# libzmq drops a connection that sends a frame above this (ZMQ_MAXMSGSIZE); no reply is possible then.
HARD_FRAME_LIMIT_BYTES = 64 * 1024 * 1024
MAX_ARRAYS = 16
MAX_DIMS = 4
MAX_ID_CHARS = 64
MAX_QUEUED_JOBS = 64
MAX_QUEUED_PER_CLIENT = 16  # per identity (hello token or CURVE key)
MAX_QUEUED_PER_CONNECTION = 16  # per connection, whatever identities it says hello as
MAX_JSON_DEPTH = 32  # nesting of a header's objects and lists
# Bytes of replies and events with arrays the server holds for one connection that is not reading them.
MAX_UNREAD_BYTES = 64 * 1024 * 1024

HEARTBEAT_INTERVAL_S = 1.0  # both sides send something at least this often
BACKEND_TIMEOUT_S = 3.0  # a client declares the backend dead after this much silence
CLIENT_FORGET_S = 10.0  # the server stops heartbeating a client it has not heard from for this long

DTYPES: tuple[str, ...] = ("uint8", "int32", "uint32", "float32", "float16")
_ITEMSIZE = {"uint8": 1, "int32": 4, "uint32": 4, "float32": 4, "float16": 2}

# Job ids and client tokens become folder names and dictionary keys: a strict alphabet rules out path tricks.
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Error codes carried by ``error`` messages.
ERROR_CODES: tuple[str, ...] = (
    "malformed",      # frames or JSON that cannot be read
    "too_large",      # a size limit was exceeded
    "version",        # "v" is not this protocol's version
    "unknown_type",   # "type" names no message this side accepts
    "bad_field",      # a field is missing, unknown, of the wrong type or out of range
    "settings",       # job settings rejected by the shared settings schema
    "prompt",         # the prompt is empty, too long, or unreadable by the prior
    "model",          # the job's model is not on the server's machine (the message says how to fetch it)
    "unknown_job",    # no job with that id belongs to this client
    "unknown_client", # a hello's client token was not issued by this server
    "bad_state",      # the job exists but cannot do that now (e.g. refine a job with no checkpoint)
    "queue_full",     # too many queued jobs
    "backlog",        # too many bytes of earlier replies to this connection are still unread
    "job_failed",     # the job raised; fatal for that job only
    "mesh_failed",    # an intermediate mesh could not be extracted (not fatal)
    "job_retry",      # the job's Ray actor died; the job runs again from the start (not fatal)
    "internal",       # a server bug; the server keeps serving
)


class ProtocolError(ValueError):
    """A message breaks the protocol; ``code`` is one of ERROR_CODES and the text names the problem."""

    def __init__(self, code: str, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass
class Message:
    """A decoded message: the header dict and its arrays (numpy arrays, or raw bytes without numpy)."""

    header: dict[str, Any]
    arrays: dict[str, Any] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return self.header["type"]

    @property
    def job(self) -> str | None:
        return self.header.get("job")

    def get(self, key: str, default: Any = None) -> Any:
        return self.header.get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self.header[key]


# --- the message table ----------------------------------------------------------------------------------------
# A field spec: (python types accepted, required?). bool is never accepted where int is asked (JSON true is not 1).

@dataclass(frozen=True)
class FieldSpec:
    kinds: tuple[type, ...]
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None  # for strings
    pattern: re.Pattern[str] | None = None


@dataclass(frozen=True)
class MessageSpec:
    direction: str  # "c2s" (client to server) or "s2c"
    fields: Mapping[str, FieldSpec]
    arrays: tuple[str, ...] = ()
    summary: str = ""


_ID = FieldSpec((str,), max_length=MAX_ID_CHARS, pattern=ID_PATTERN)
_JOB = FieldSpec((str,), True, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)
_OBJ = FieldSpec((dict,))
_INT = FieldSpec((int,))
_NUM = FieldSpec((int, float))
_STR = FieldSpec((str,))
_BOOL = FieldSpec((bool,))
_LIST = FieldSpec((list,))

# Options of a submit/refine's "stream" object: how much a job streams back. Not training settings, so they
# live here rather than in shared/settings.py.
STREAM_OPTIONS: dict[str, FieldSpec] = {
    "progress_every": FieldSpec((int,), minimum=1, maximum=100000),
    "preview_size": FieldSpec((int,), minimum=16, maximum=512),
    "preview_views": FieldSpec((int,), minimum=1, maximum=8),
    "mesh_every": FieldSpec((int,), minimum=0, maximum=1000000),
    "mesh_resolution": FieldSpec((int,), minimum=32, maximum=512),
    "mesh_texture_size": FieldSpec((int,), minimum=64, maximum=8192),
}
STREAM_DEFAULTS: dict[str, int] = {"progress_every": 5, "preview_size": 128, "preview_views": 4, "mesh_every": 0,
                                   "mesh_resolution": 64, "mesh_texture_size": 256}

MESH_ARRAYS = ("vertices", "faces", "uvs", "colours", "texture")

MESSAGES: dict[str, MessageSpec] = {
    # client -> server
    "hello": MessageSpec("c2s", {"client": _ID, "name": FieldSpec((str,), max_length=200)},
                         summary="introduce the client; optional stable client token owns its jobs"),
    # A texture job (kind "texture") carries the user's mesh as arrays (shared/texture_mesh.py checks them); an
    # image-prompt job (method isd) may carry its reference image (shared/reference_image.py).
    "submit": MessageSpec("c2s", {"prompt": FieldSpec((str,), True), "settings": _OBJ, "stream": _OBJ,
                                  "kind": FieldSpec((str,), max_length=16)},
                          ("vertices", "faces", "uvs", "reference"),
                          summary="queue a job: generate, or texture the mesh sent; with a reference image for isd"),
    "cancel": MessageSpec("c2s", {"job": _JOB}, summary="stop a queued or running job"),
    "refine": MessageSpec("c2s", {"job": _JOB, "prompt": _STR, "settings": _OBJ, "stream": _OBJ},
                          summary="continue a job's state with a new prompt and/or settings, as a new job"),
    "list": MessageSpec("c2s", {}, summary="this client's jobs, live and on disk"),
    "fetch": MessageSpec("c2s", {"job": _JOB}, summary="a finished job's record and final mesh"),
    "ping": MessageSpec("c2s", {"t": _NUM}, summary="heartbeat; answered by pong"),
    "shutdown": MessageSpec("c2s", {}, summary="stop the server gracefully (as SIGTERM)"),
    # server -> client
    "welcome": MessageSpec("s2c", {"server": _STR, "capabilities": _OBJ, "client": _STR},
                           summary="answer to hello: versions, methods, representations, model, device, memory"),
    "accepted": MessageSpec("s2c", {"job": _JOB, "position": _INT, "parent": _STR},
                            summary="a job was queued; position 0 means it runs next"),
    "started": MessageSpec("s2c", {"job": _JOB, "step": _INT, "total": _INT}, summary="a job began running"),
    "progress": MessageSpec("s2c", {"job": _JOB, "step": _INT, "total": _INT,
                                    "loss": FieldSpec((int, float, type(None))), "seconds": _NUM,
                                    "eta_seconds": _NUM}, summary="training progress"),
    "preview": MessageSpec("s2c", {"job": _JOB, "step": _INT, "views": _INT}, ("image",),
                           summary="turntable strip, uint8 [H, views*H, 3]"),
    "mesh": MessageSpec("s2c", {"job": _JOB, "step": _INT, "final": _BOOL}, MESH_ARRAYS,
                        summary="a mesh: intermediate while training, final before finished"),
    "finished": MessageSpec("s2c", {"job": _JOB, "status": _STR, "record": _OBJ, "files": _LIST},
                            summary="the job's files and job.json are on disk"),
    "cancelled": MessageSpec("s2c", {"job": _JOB, "step": _INT, "reason": _STR, "refined_by": _STR,
                                     "requested_step": _INT},
                             summary="the job stopped early"),
    "error": MessageSpec("s2c", {"code": _STR, "message": _STR, "job": _STR, "fatal": _BOOL},
                         summary="a request or a job failed; names the problem"),
    "results": MessageSpec("s2c", {"results": _LIST}, summary="answer to list"),
    "result": MessageSpec("s2c", {"job": _JOB, "record": _OBJ}, MESH_ARRAYS, summary="answer to fetch"),
    "pong": MessageSpec("s2c", {"t": _NUM}, summary="answer to ping"),
    "heartbeat": MessageSpec("s2c", {"t": _NUM}, summary="sent every second to recently heard clients"),
    "shutting_down": MessageSpec("s2c", {"reason": _STR}, summary="the server is stopping"),
}

# Fields every header may carry besides its type's own.
COMMON_FIELDS = ("v", "type", "id", "arrays")


# --- encode / decode --------------------------------------------------------------------------------------------

def _numpy() -> Any:
    try:
        import numpy

        return numpy
    except ImportError:  # pragma: no cover - numpy ships with Blender and the backend
        return None


def encode(header: Mapping[str, Any], arrays: Mapping[str, Any] | None = None) -> list[bytes]:
    """Frames for ``header`` plus ``arrays`` (name -> numpy array). Adds "v" and the "arrays" descriptors."""
    np = _numpy()
    head = dict(header)
    head.setdefault("v", VERSION)
    frames: list[bytes] = []
    descriptors = []
    for name, array in (arrays or {}).items():
        if np is None:
            raise ProtocolError("internal", "numpy is needed to send arrays")
        a = np.ascontiguousarray(array)
        dtype = a.dtype.name
        if dtype not in DTYPES:
            raise ProtocolError("bad_field", f"array '{name}' has dtype {dtype}; allowed: {', '.join(DTYPES)}")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        descriptors.append({"name": name, "dtype": dtype, "shape": list(a.shape)})
        frames.append(a.tobytes())
    if descriptors:
        head["arrays"] = descriptors
    text = json.dumps(head, separators=(",", ":"), allow_nan=False)
    return [text.encode("utf-8"), *frames]


def _fail(code: str, message: str, request_id: Any = None) -> None:
    raise ProtocolError(code, message, request_id)


def decode(frames: Sequence[bytes], max_bytes: int = MAX_CLIENT_INBOUND_BYTES) -> Message:
    """Parse frames into a Message, checking framing, version and array descriptors (not per-type fields).

    Raises ProtocolError naming the problem. ``request_id`` on the error is the header's "id" when the header
    could be read, so a reply can be matched to its request.
    """
    if not frames:
        _fail("malformed", "empty message: expected a JSON header frame")
    total = sum(len(f) for f in frames)
    if total > max_bytes:
        _fail("too_large", f"message is {total} bytes; at most {max_bytes} are accepted")
    raw = bytes(frames[0])
    if len(raw) > MAX_HEADER_BYTES:
        _fail("too_large", f"header frame is {len(raw)} bytes; at most {MAX_HEADER_BYTES} are accepted")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        _fail("malformed", f"header frame is not UTF-8 ({exc.reason} at byte {exc.start})")
    depth = _json_depth(text)
    if depth > MAX_JSON_DEPTH:
        _fail("malformed", f"header nests objects and lists {depth} deep; at most {MAX_JSON_DEPTH} levels are accepted")
    try:
        header = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:  # int parsing beyond Python's digit limit is a ValueError too
        _fail("malformed", f"header frame is not valid JSON: {exc}")
    if not isinstance(header, dict):
        _fail("malformed", f"header must be a JSON object, got {type(header).__name__ if header is not None else 'null'}")
    request_id = header.get("id")
    if not _valid_id(request_id):
        request_id = None
        _fail("bad_field", "field 'id' must be a string of 1-64 characters A-Z a-z 0-9 _ -")
    v = header.get("v")
    if "v" not in header:
        _fail("version", f"header has no 'v' (protocol version); this side speaks version {VERSION}", request_id)
    if isinstance(v, bool) or not isinstance(v, int):
        _fail("version", f"field 'v' must be an integer protocol version, got {v!r}", request_id)
    if v != VERSION:
        _fail("version", f"protocol version {v} is not supported; this side speaks version {VERSION}", request_id)
    kind = header.get("type")
    if not isinstance(kind, str):
        _fail("bad_field", f"field 'type' must be a string naming the message type, got {kind!r}", request_id)
    arrays = _decode_arrays(header, frames[1:], request_id, max_bytes)
    return Message(header, arrays)


def _json_depth(text: str) -> int:
    """Deepest nesting of [ and { outside strings, counted without parsing (so no recursion limit is hit)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in the protocol's JSON")


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, str) and ID_PATTERN.match(value) is not None)


def _decode_arrays(header: dict[str, Any], frames: Sequence[bytes], request_id: Any,
                   max_bytes: int) -> dict[str, Any]:
    descriptors = header.get("arrays", [])
    if not isinstance(descriptors, list):
        _fail("bad_field", "field 'arrays' must be a list of {name, dtype, shape}", request_id)
    if len(descriptors) > MAX_ARRAYS:
        _fail("too_large", f"{len(descriptors)} arrays declared; at most {MAX_ARRAYS}", request_id)
    if len(descriptors) != len(frames):
        _fail("malformed", f"header declares {len(descriptors)} arrays but {len(frames)} array frames follow",
              request_id)
    np = _numpy()
    out: dict[str, Any] = {}
    for i, (d, frame) in enumerate(zip(descriptors, frames)):
        if not isinstance(d, dict) or set(d) != {"name", "dtype", "shape"}:
            _fail("bad_field", f"arrays[{i}] must be an object with exactly name, dtype, shape", request_id)
        name, dtype, shape = d["name"], d["dtype"], d["shape"]
        if not isinstance(name, str) or not 1 <= len(name) <= 64:
            _fail("bad_field", f"arrays[{i}].name must be a string of 1-64 characters", request_id)
        if name in out:
            _fail("bad_field", f"array '{name}' is declared twice", request_id)
        if dtype not in DTYPES:
            _fail("bad_field", f"array '{name}' has dtype {dtype!r}; allowed: {', '.join(DTYPES)}", request_id)
        _check_shape(name, dtype, shape, max_bytes, request_id)
        expected = _ITEMSIZE[dtype] * math.prod(shape)
        if expected != len(frame):
            _fail("malformed", f"array '{name}' declares {dtype} {shape} = {expected} bytes but its frame has "
                               f"{len(frame)} bytes", request_id)
        if np is None:
            out[name] = bytes(frame)
        else:
            out[name] = np.frombuffer(frame, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    return out


def _check_shape(name: str, dtype: str, shape: Any, max_bytes: int, request_id: Any) -> None:
    """Raise ProtocolError unless ``shape`` is one numpy can build and a message of ``max_bytes`` can carry."""
    if not isinstance(shape, list):
        _fail("bad_field", f"array '{name}' shape must be a list of at most {MAX_DIMS} non-negative integers, "
                           f"got {_short(shape)}", request_id)
    if len(shape) > MAX_DIMS:
        _fail("bad_field", f"array '{name}' shape has {len(shape)} dimensions; at most {MAX_DIMS} are allowed",
              request_id)
    for i, n in enumerate(shape):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            _fail("bad_field", f"array '{name}' shape {_short(shape)}: dimension {i} is {_short(n)}; each "
                               "dimension must be a non-negative integer", request_id)
    # A zero dimension makes the frame empty whatever the others say, so the byte count alone would let
    # [0, 10**30] through to numpy, which cannot build it. The product of the other dimensions is bounded by
    # what a message can carry: that refuses no shape a non-empty array in such a message could have.
    items = math.prod(n for n in shape if n)
    limit = max_bytes // _ITEMSIZE[dtype]
    if items > limit:
        _fail("bad_field", f"array '{name}' shape {_short(shape)} is too large: its non-zero dimensions multiply to "
                           f"{_short(items)} {dtype} items; at most {limit} fit in the {max_bytes} bytes a message "
                           "may carry", request_id)


# --- per-type field checks -----------------------------------------------------------------------------------

def check_fields(message: Message, direction: str) -> None:
    """Raise ProtocolError unless ``message``'s type is one ``direction`` accepts and its fields fit the table."""
    h = message.header
    rid = h.get("id")
    spec = MESSAGES.get(message.type)
    if spec is None or spec.direction != direction:
        accepted = sorted(k for k, s in MESSAGES.items() if s.direction == direction)
        _fail("unknown_type", f"unknown message type {message.type!r}; accepted: {', '.join(accepted)}", rid)
    unknown = sorted(set(h) - set(COMMON_FIELDS) - set(spec.fields))
    if unknown:
        _fail("bad_field", f"{message.type}: unknown field(s) {', '.join(map(repr, unknown))}; allowed: "
                           f"{', '.join(sorted(spec.fields)) or 'none'}", rid)
    for name, fs in spec.fields.items():
        if name not in h:
            if fs.required:
                _fail("bad_field", f"{message.type}: missing required field '{name}'", rid)
            continue
        check_value(f"{message.type}: field '{name}'", h[name], fs, rid)
    extra_arrays = sorted(set(message.arrays) - set(spec.arrays))
    if extra_arrays:
        _fail("bad_field", f"{message.type} carries no arrays named {', '.join(extra_arrays)}", rid)


def check_value(what: str, value: Any, fs: FieldSpec, rid: Any = None) -> None:
    kinds = fs.kinds
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        words = {"str": "a string", "int": "an integer", "float": "a number", "dict": "an object",
                 "list": "a list", "bool": "true or false", "NoneType": "null"}
        names = " or ".join(words[k.__name__] for k in kinds if not (k is int and float in kinds))
        _fail("bad_field", f"{what} must be {names}, got {_short(value)}", rid)
    if isinstance(value, float) and not math.isfinite(value):
        _fail("bad_field", f"{what} must be finite", rid)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if (fs.minimum is not None and value < fs.minimum) or (fs.maximum is not None and value > fs.maximum):
            _fail("bad_field", f"{what} is {value}; allowed range [{fs.minimum}, {fs.maximum}]", rid)
    if isinstance(value, str):
        if fs.max_length is not None and len(value) > fs.max_length:
            _fail("bad_field", f"{what} is {len(value)} characters; at most {fs.max_length}", rid)
        if fs.pattern is not None and not fs.pattern.match(value):
            _fail("bad_field", f"{what} must match {fs.pattern.pattern}, got {_short(value)}", rid)


def check_stream(stream: Mapping[str, Any] | None, rid: Any = None) -> dict[str, int]:
    """A submit/refine "stream" object with defaults filled in, or ProtocolError naming the bad option."""
    out = dict(STREAM_DEFAULTS)
    for name, value in (stream or {}).items():
        fs = STREAM_OPTIONS.get(name)
        if fs is None:
            _fail("bad_field", f"unknown stream option {name!r}; allowed: {', '.join(sorted(STREAM_OPTIONS))}", rid)
        check_value(f"stream option '{name}'", value, fs, rid)
        out[name] = value
    return out


def check_prompt(prompt: Any, max_chars: int, rid: Any = None) -> str:
    if not isinstance(prompt, str):
        _fail("bad_field", f"field 'prompt' must be a string, got {_short(prompt)}", rid)
    if not prompt.strip():
        _fail("prompt", "the prompt is empty", rid)
    if len(prompt) > max_chars:
        _fail("prompt", f"the prompt is {len(prompt)} characters; at most {max_chars} are allowed", rid)
    return prompt


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def types_for(direction: str) -> list[str]:
    return [k for k, s in MESSAGES.items() if s.direction == direction]


def error_header(code: str, message: str, request_id: Any = None, job: str | None = None,
                 fatal: bool = False) -> dict[str, Any]:
    head: dict[str, Any] = {"type": "error", "code": code, "message": message, "fatal": fatal}
    if request_id is not None:
        head["id"] = request_id
    if job is not None:
        head["job"] = job
    return head


__all__ = [
    "VERSION", "DTYPES", "MESSAGES", "STREAM_OPTIONS", "STREAM_DEFAULTS", "MESH_ARRAYS", "ERROR_CODES",
    "Message", "MessageSpec", "FieldSpec", "ProtocolError", "encode", "decode", "check_fields", "check_stream",
    "check_prompt", "error_header", "types_for", "MAX_SERVER_INBOUND_BYTES", "MAX_CLIENT_INBOUND_BYTES",
    "HEARTBEAT_INTERVAL_S", "BACKEND_TIMEOUT_S", "ID_PATTERN", "MAX_JSON_DEPTH", "MAX_UNREAD_BYTES",
]
