"""One home for a job's status words and one writer of its record, checked by scanning the source.

Any string constant equal to a JobStatus value outside shared/status.py is a status written by hand, except
where the same word belongs to another vocabulary the scan can see: a wire message's type (``{"type":
"cancelled"}``, ``m.type == ...``), a dict key or subscript (the batch summary's ``"finished"`` count), a
docstring. Anything else that is not a status says so on its line or the line above (``not a JobStatus``).
job.json is named, and written, only in backend/records.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

from shared.status import JobStatus

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("backend", "shared", "blender_addon")
STATUS_HOME = Path("shared/status.py")
RECORD_HOME = Path("backend/records.py")
MARKER = "not a JobStatus"
WRITERS = {"write_json", "write_bytes", "write_text", "publish", "open", "dump"}
STATUS_WORDS = {s.value for s in JobStatus}


def _sources() -> list[Path]:
    files = [p.relative_to(REPO) for d in SCANNED for p in sorted((REPO / d).rglob("*.py"))]
    return [p for p in files if "_vendor" not in p.parts and "__pycache__" not in p.parts]


def _is_type(node: ast.AST) -> bool:
    """``x.type``, ``x["type"]`` or ``x.get("type")``: a wire message's type, a vocabulary of its own."""
    if isinstance(node, ast.Attribute):
        return node.attr == "type"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "type"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        return bool(node.args) and isinstance(node.args[0], ast.Constant) and node.args[0].value == "type"
    return False


def _exempt(tree: ast.AST) -> set[int]:
    """ids of constants in a context that is not a status (see the module's docstring)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            out.add(id(node.value))  # docstring
        elif isinstance(node, ast.Dict):
            out.update(id(k) for k in node.keys if k is not None)
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value == "type":
                    out.add(id(v))
        elif isinstance(node, ast.Subscript):
            out.add(id(node.slice))
        elif isinstance(node, ast.Compare) and any(_is_type(n) for n in [node.left, *node.comparators]):
            out.update(id(n) for n in ast.walk(node) if isinstance(n, ast.Constant))
    return out


def status_literals(source: str, name: str = "<planted>") -> list[str]:
    """``name:line: 'word'`` for each status written as a string literal."""
    tree = ast.parse(source)
    lines = source.splitlines()
    exempt = _exempt(tree)
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in STATUS_WORDS):
            continue
        if id(node) in exempt:
            continue
        near = lines[max(0, node.lineno - 2):node.lineno]
        if any(MARKER in line for line in near):
            continue
        found.append(f"{name}:{node.lineno}: {node.value!r}")
    return found


def _mentions_record_file(node: ast.AST) -> bool:
    return any((isinstance(n, ast.Name) and n.id == "RECORD_FILE")
               or (isinstance(n, ast.Attribute) and n.attr == "RECORD_FILE") for n in ast.walk(node))


def record_writes(source: str, name: str = "<planted>") -> list[str]:
    """``name:line: why`` for each place that names job.json itself or hands RECORD_FILE to a file writer."""
    tree = ast.parse(source)
    docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value == "job.json" and id(node) not in docstrings:
            found.append(f"{name}:{node.lineno}: names job.json (use backend.records)")
        elif isinstance(node, ast.Call):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if func in WRITERS and any(_mentions_record_file(a) for a in [node.func, *node.args, *node.keywords]):
                found.append(f"{name}:{node.lineno}: {func}() of the record file (use backend.records.write_record)")
    return found


def test_the_enum_is_the_wire_and_disk_strings():
    import json

    assert [s.value for s in JobStatus] == ["queued", "running", "finished", "cancelled", "interrupted", "failed",
                                            "lost"]
    # A member is its string wherever it goes: json (job.json, the wire), str()/f-strings (logs, the panel).
    assert json.dumps({"status": JobStatus.FAILED}) == '{"status": "failed"}'
    assert str(JobStatus.LOST) == f"{JobStatus.LOST}" == "lost" and JobStatus.QUEUED == "queued"


def test_no_status_literal_outside_the_enum():
    found = []
    for path in _sources():
        if path != STATUS_HOME:
            found += status_literals((REPO / path).read_text(), str(path))
    assert not found, "status words written by hand; use shared.status.JobStatus:\n" + "\n".join(found)


def test_no_record_written_outside_records_module():
    found = []
    for path in _sources():
        if path != RECORD_HOME:
            found += record_writes((REPO / path).read_text(), str(path))
    assert not found, "job.json handled outside backend/records.py:\n" + "\n".join(found)


def test_the_status_scan_flags_planted_literals():
    planted = '''
if record.get("status") == "failed": pass
job.record("queued", ended=None)
send({"status": "running"})
x = status in ("finished", "lost")
'''
    assert [f.split(": ")[1] for f in status_literals(planted)] == ["'failed'", "'queued'", "'running'",
                                                                     "'finished'", "'lost'"]
    # Not statuses: a log message, a message type, a summary's key, a docstring, a marked line.
    quiet = '''
"""finished"""
log.info("the job finished")
send({"type": "cancelled", "status": JobStatus.CANCELLED})
if m.type in ("failed", "error"): pass
n = summary["finished"] + {"failed": 1}["failed"]
state = "lost"  # not a JobStatus: a connection state
'''
    assert status_literals(quiet) == []


def test_the_record_scan_flags_planted_writes():
    planted = '''
write_json(folder / "job.json", record)
write_json(folder / records.RECORD_FILE, record)
(folder / RECORD_FILE).write_text(text)
'''
    assert len(record_writes(planted)) == 3
    assert record_writes('"""Writes job.json last."""\nrecords.write_record(folder, record)\n') == []
