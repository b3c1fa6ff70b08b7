"""The rows of a batch (``python -m backend batch PROMPTS``): a text file (one prompt a line) or a CSV whose
``prompt`` column is the prompt and whose other columns are settings of the shared schema (method,
representation, seed, quality, steps, ...). Every row is checked before anything runs: a bad file, column,
value or prompt is an error naming the row and what is allowed.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from shared.settings import SCHEMA


class BatchInputError(ValueError):
    """The prompts file cannot be run; the message says where and what is allowed."""


@dataclass
class Row:
    index: int  # 1-based, in file order
    line: int  # where it is in the file, for messages
    prompt: str
    given: dict[str, Any]  # the row's own settings (CSV cells), over the command line's
    settings: dict[str, Any]  # complete and validated

    @property
    def name(self) -> str:
        """The row's folder (and job id): its number and the prompt's words, e.g. ``0003-a-red-cube``."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.prompt.lower()).strip("-")[:40].strip("-")
        return f"{self.index:04d}-{slug or 'prompt'}"


def _cell(name: str, text: str, where: str) -> Any:
    """A CSV cell as the setting's type (the schema checks the range afterwards)."""
    kind = SCHEMA[name].kind
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return lowered in ("true", "1", "yes")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        expected = {bool: "true or false", int: "an integer", float: "a number"}[kind]
        raise BatchInputError(f"{where}: column '{name}' is {text!r}; expected {expected}") from None
    return text


def _prompts_of_text(path: Path) -> list[tuple[int, str, dict[str, Any]]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.strip()
        if text and not text.startswith("#"):  # blank lines and comments separate groups of prompts
            rows.append((number, text, {}))
    return rows


def _prompts_of_csv(path: Path) -> list[tuple[int, str, dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        allowed = "prompt (required) and settings of the shared schema: " + ", ".join(sorted(SCHEMA))
        if "prompt" not in columns:
            raise BatchInputError(f"{path}: the CSV has no 'prompt' column (its header is {columns}); columns "
                                  f"allowed: {allowed}")
        for column in columns:
            if column != "prompt" and column not in SCHEMA:
                raise BatchInputError(f"{path}: unknown CSV column '{column}'; columns allowed: {allowed}")
        rows = []
        for record in reader:
            where = f"{path} line {reader.line_num}"
            if None in record:
                raise BatchInputError(f"{where}: more cells than the header's {len(columns)} columns")
            cells = {k.strip(): (v or "").strip() for k, v in record.items()}
            given = {k: _cell(k, v, where) for k, v in cells.items() if k != "prompt" and v != ""}
            rows.append((reader.line_num, cells.get("prompt", ""), given))
    return rows


def read_rows(path: Path, defaults: Mapping[str, Any]) -> list[Row]:
    """The batch's rows, each with its validated settings (``defaults``: the command line's settings), each
    admitted as the server admits a job (backend/jobs/admission.py): better before the first job than in the tenth."""
    from backend.jobs.admission import Admission, Refused

    if not path.is_file():
        raise BatchInputError(f"prompts file {path} does not exist (give a text file with one prompt a line, or "
                              "a CSV with a 'prompt' column)")
    raw = _prompts_of_csv(path) if path.suffix.lower() == ".csv" else _prompts_of_text(path)
    if not raw:
        raise BatchInputError(f"{path} holds no prompts")
    admission = Admission()
    rows = []
    for index, (line, prompt, given) in enumerate(raw, 1):
        try:
            settings = admission.admit(prompt, {**defaults, **given})
        except Refused as exc:
            raise BatchInputError(f"{path} line {line}: {exc}") from None
        rows.append(Row(index, line, prompt, given, settings))
    return rows


__all__ = ["Row", "BatchInputError", "read_rows"]
