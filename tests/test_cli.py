"""`python -m backend` as a user runs it: every subcommand's --help, in a real subprocess."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from backend.cli import IMAGE_ONLY, build_parser
from shared.settings import SCHEMA

ROOT = Path(__file__).resolve().parents[1]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    # From the parser itself, so a subcommand added later is covered without touching this test.
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert actions, "python -m backend has no subcommands"
    return {name: sub for a in actions for name, sub in a.choices.items()}


@pytest.mark.parametrize("command", [[], *([c] for c in sorted(_subparsers()))], ids=lambda c: " ".join(c) or "top")
def test_every_subcommand_prints_its_help(command: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "backend", *command, "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: python -m backend"), done.stdout[:500]
    assert done.stderr == ""


def test_a_settings_help_with_a_percent_sign_is_printed_as_written() -> None:
    # Help texts are plain text: a "%" must reach the user as written, neither read as a format nor dropped.
    with_percent = [name for name, s in SCHEMA.items() if "%" in s.help and name not in IMAGE_ONLY]
    assert with_percent, "no setting's help holds a '%' any more; this test then checks nothing"
    # Wrapping moves line breaks (also after hyphens), so compare without whitespace.
    text = "".join(_subparsers()["generate"].format_help().split())
    for name in with_percent:
        assert "".join(SCHEMA[name].help.split()) in text, name
