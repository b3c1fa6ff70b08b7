"""PhaseClock: a step's phases are named where they end, and each name gets the time since the previous mark."""

from __future__ import annotations

import time

import pytest
import torch

from backend.phases import PhaseClock


def test_each_named_phase_gets_the_time_since_the_previous_mark():
    clock = PhaseClock(("load", "think", "write"), torch.device("cpu"))
    for _ in range(2):
        clock.start()
        clock.mark("load")
        time.sleep(0.05)
        clock.mark("think")
        clock.mark("write")
    totals = clock.totals()
    assert list(totals) == ["load", "think", "write"]
    assert totals["think"] >= 0.1
    assert totals["load"] < 0.05 and totals["write"] < 0.05


def test_a_phase_marked_out_of_order_or_before_start_is_refused():
    clock = PhaseClock(("render", "backward"), torch.device("cpu"))
    with pytest.raises(RuntimeError, match="before start"):
        clock.mark("render")
    clock.start()
    with pytest.raises(ValueError, match="'backward' marked where 'render' ends"):
        clock.mark("backward")
    clock.mark("render")
    clock.mark("backward")
    assert set(clock.totals()) == {"render", "backward"}
