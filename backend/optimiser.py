"""The training loop's AdamW: torch's own, minus the import of torch._dynamo that its first use costs.

Why: torch.optim wraps ``Optimizer.add_param_group``, ``zero_grad``, ``state_dict`` and ``load_state_dict`` in
``torch._disable_dynamo`` and ``step`` in a grad-mode wrapper, and both import torch._dynamo (with sympy and the
FX tracer) on their first call: about 1.2 s of CPU before a job's first step, every job, for a compiler the loop
never uses. This class runs the very same functions torch's AdamW runs (the same update, state and
``state_dict`` format, so checkpoints of either load into the other), called past those wrappers. Where a
torch version stops exposing them (``inspect.unwrap`` finds nothing to unwrap), the wrapped ones run: the same
result, with the import.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch


class AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` whose methods skip the wrappers that import torch._dynamo (see the module)."""

    add_param_group = inspect.unwrap(torch.optim.Optimizer.add_param_group)
    zero_grad = inspect.unwrap(torch.optim.Optimizer.zero_grad)
    state_dict = inspect.unwrap(torch.optim.Optimizer.state_dict)
    load_state_dict = inspect.unwrap(torch.optim.Optimizer.load_state_dict)
    _update = inspect.unwrap(torch.optim.AdamW.step)

    def step(self, closure: Callable[[], float] | None = None) -> Any:
        # What the unwrapped grad-mode wrapper did: no autograd graph through the update (not differentiable).
        with torch.no_grad():
            return self._update(closure)


__all__ = ["AdamW"]
