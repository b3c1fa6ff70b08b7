"""`python -m backend batch` with the local executor: bad input is refused before anything runs, naming the row and
what is allowed; a Ctrl-C leaves a summary and finished rows that a rerun skips. (Ray: tests/test_ray.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend.batch_input import BatchInputError, read_rows
from server_support import ROOT

FAST = ["--quality", "draft", "--representation", "gaussians", "--gaussian-points", "100", "--camera-bank-size", "4",
        "--mesh-resolution", "32", "--texture-size", "64", "--procedural-resolution", "32", "--device", "cpu"]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name, text, expected", [
    ("p.csv", "prompt,colour\na red cube,red\n", "unknown CSV column 'colour'; columns allowed: prompt"),
    ("p.csv", "seed\n3\n", "no 'prompt' column"),
    ("p.csv", "prompt,seed\na red cube,abc\n", "line 2: column 'seed' is 'abc'; expected an integer"),
    ("p.csv", "prompt,method\na red cube,foo\n", "line 2: setting 'method' is 'foo'; allowed: tbsd"),
    ("p.csv", "prompt,steps\na red cube,0\n", "line 2: setting 'steps' is 0; allowed range"),
    ("p.txt", "a red cube\na purple unicorn\n", "line 2: "),
    ("p.txt", "\n# only a comment\n", "holds no prompts"),
])
def test_bad_input_names_the_row_and_what_is_allowed(tmp_path, name, text, expected):
    with pytest.raises(BatchInputError) as caught:
        read_rows(_write(tmp_path, name, text), {})
    assert expected in str(caught.value), str(caught.value)


def test_rows_of_a_text_file_and_a_csv(tmp_path):
    rows = read_rows(_write(tmp_path, "p.txt", "a red cube\n\n# later\n  a blue sphere  \n"), {"steps": 5})
    assert [(r.index, r.line, r.prompt, r.settings["steps"]) for r in rows] == [(1, 1, "a red cube", 5),
                                                                                (2, 4, "a blue sphere", 5)]
    assert rows[1].name == "0002-a-blue-sphere"
    rows = read_rows(_write(tmp_path, "p.csv", "prompt,seed,representation,quality\na red cube,4,,high\n"), {})
    assert rows[0].given == {"seed": 4, "quality": "high"}  # an empty cell keeps the default
    assert rows[0].settings["steps"] == 20000  # the row's preset applies under the explicit values


def test_missing_file_exits_2_naming_it(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "backend", "batch", str(tmp_path / "none.txt"), "--out",
                           str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and str(tmp_path / "none.txt") in proc.stderr


def test_an_interrupted_batch_keeps_its_finished_rows_and_a_rerun_runs_only_the_rest(tmp_path):
    prompts = _write(tmp_path, "p.csv", "prompt,steps\na red cube,2\na blue sphere,400\na green cone,2\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "backend", "batch", str(prompts), "--out", str(out), *FAST]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # The batch starts with Ctrl-C's default handling, as from a terminal: a shell without job control starts
    # background commands with SIGINT ignored, and children inherit that (a CI runner started with `&` did).
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    second = out / "0002-a-blue-sphere" / "job.json"
    # Ctrl-C while the second row trains. Generous: on a loaded 2-core machine the first row (worker start, prior,
    # export) can take minutes; the wait ends as soon as the row runs.
    deadline = time.monotonic() + 600
    running = False
    while not running and time.monotonic() < deadline and proc.poll() is None:
        try:
            running = json.loads(second.read_text()).get("status") == "running"
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    assert running, f"the second row never started: {proc.poll()=}"
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in summary["results"]] == ["finished", "interrupted", "pending"], err[-2000:]
    assert json.loads(second.read_text())["status"] == "interrupted"
    first = out / "0001-a-red-cube" / "job.json"
    mtime = first.stat().st_mtime_ns

    prompts.write_text(prompts.read_text().replace("400", "2"))  # the edited row runs again at its new length
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "2 of 3 rows to run (1 finished earlier)" in rerun.stderr
    assert first.stat().st_mtime_ns == mtime
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["status"], r["skipped"]) for r in summary["results"]] == [
        ("finished", True), ("finished", False), ("finished", False)]
    assert "| 1 | a red cube |" in (out / "summary.md").read_text()
    assert (out / "contact_sheet.png").stat().st_size > 0
