"""Jobs on the backend: Generate, Refine, Cancel, results; the Session the connection's timer ticks."""

from __future__ import annotations

from typing import Any

JOB_KEY = "tbsd_job"  # custom property on a generated object: the job whose run it shows


def connect(context: Any) -> Any:
    raise NotImplementedError("waiting for shared/protocol.py")


def generate(context: Any) -> None:
    raise NotImplementedError("waiting for shared/protocol.py")


def refine(context: Any, obj: Any) -> None:
    raise NotImplementedError("waiting for shared/protocol.py")


def cancel(context: Any) -> None:
    raise NotImplementedError("waiting for shared/protocol.py")


def request_results(context: Any) -> None:
    raise NotImplementedError("waiting for shared/protocol.py")


def import_result(context: Any, job_id: str) -> None:
    raise NotImplementedError("waiting for shared/protocol.py")
