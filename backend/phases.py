"""Time spent per phase of a training step, without stalling the GPU.

On CUDA the clock records events on the stream and reads their elapsed times only when asked (or when a
backlog builds up), so timing a loop does not insert the host synchronisations that would serialise it. On the
CPU it reads the wall clock. Either way a phase's figure is the device time from its start mark to its end mark.

A step is ``start()`` then ``mark(name)`` at the end of each phase, in the order of ``names``: a phase runs from
the previous mark to its own. Callers name the phase they end, so a reordered or forgotten mark raises instead of
booking one phase's time under another's name.
"""

from __future__ import annotations

import time

import torch

_BACKLOG = 256  # steps of pending CUDA events before the oldest are resolved (one sync per that many steps)


class PhaseClock:
    def __init__(self, names: tuple[str, ...], device: torch.device) -> None:
        self.names = names
        self.cuda = device.type == "cuda"
        self._totals = {name: 0.0 for name in names}
        self._pending: list[list[torch.cuda.Event]] = []
        self._marks: list = []

    def start(self) -> None:
        self._marks = [self._mark()]

    def mark(self, name: str) -> None:
        """End of phase ``name``, which must be the step's next phase in the order of ``names``."""
        if not self._marks:
            raise RuntimeError(f"phase {name!r} marked before start()")
        expected = self.names[len(self._marks) - 1]
        if name != expected:
            raise ValueError(f"phase {name!r} marked where {expected!r} ends (phases in order: {self.names})")
        self._marks.append(self._mark())
        if len(self._marks) == len(self.names) + 1:
            self._close_step()

    def _mark(self):  # type: ignore[no-untyped-def]
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _close_step(self) -> None:
        marks, self._marks = self._marks, []
        if not self.cuda:
            for name, a, b in zip(self.names, marks, marks[1:]):
                self._totals[name] += b - a
            return
        self._pending.append(marks)
        if len(self._pending) >= _BACKLOG:
            self._resolve(len(self._pending) // 2)

    def _resolve(self, count: int) -> None:
        done, self._pending = self._pending[:count], self._pending[count:]
        if done:
            done[-1][-1].synchronize()
        for marks in done:
            for name, a, b in zip(self.names, marks, marks[1:]):
                self._totals[name] += a.elapsed_time(b) / 1000.0

    def totals(self) -> dict[str, float]:
        """Seconds per phase so far (waits for the GPU to finish the steps timed)."""
        self._resolve(len(self._pending))
        return dict(self._totals)


__all__ = ["PhaseClock"]
