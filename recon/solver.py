"""Generic pieces of nonlinear conjugate gradients: no files, devices or progress bars.

The ptychography problem (``recon.ptycho``) supplies callables; these
functions decide directions and step lengths and keep the history.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


def dai_yuan_beta(
    grad: Any,
    precond_grad: Any,
    previous_grad: Any | None,
    previous_direction: Any | None,
    inner: Callable[[Any, Any], float],
) -> float:
    """Dai–Yuan coefficient for preconditioned nonlinear CG.

    ``beta = Re<g_k, M g_k> / Re<d_{k-1}, g_k - g_{k-1}>``; 0 (a restart along the
    preconditioned steepest descent) when there is no history or the
    denominator is not positive, which Dai–Yuan needs for a descent direction.
    """
    if previous_grad is None or previous_direction is None:
        return 0.0
    denominator = inner(previous_direction, grad) - inner(previous_direction, previous_grad)
    if not denominator > 0:
        return 0.0
    beta = inner(grad, precond_grad) / denominator
    return beta if beta > 0 else 0.0


@dataclasses.dataclass
class LineSearchResult:
    step: float
    """Accepted step length (0 when no trial decreased the cost enough)."""
    cost: float
    """Cost at the accepted step (the starting cost when step is 0)."""
    trials: int


def backtracking(
    cost_at: Callable[[float], float],
    cost0: float,
    slope: float,
    first_step: float,
    *,
    shrink: float = 0.5,
    sufficient_decrease: float = 1e-4,
    max_trials: int = 30,
) -> LineSearchResult:
    """Armijo backtracking: the first step of ``first_step * shrink**k`` with
    ``cost_at(step) <= cost0 + sufficient_decrease * step * slope``.

    ``slope`` is the directional derivative at step 0 (negative for a descent
    direction). ``cost_at`` is cheap in this project: trials reuse the forward
    products because the far field is linear in the step.
    """
    if not slope < 0:
        return LineSearchResult(0.0, cost0, 0)
    step = first_step
    for trial in range(1, max_trials + 1):
        cost = cost_at(step)
        if cost <= cost0 + sufficient_decrease * step * slope:
            return LineSearchResult(step, cost, trial)
        step *= shrink
    return LineSearchResult(0.0, cost0, max_trials)


def batched_backtracking(
    costs_at: Callable[[list[float]], list[float]],
    cost0: float,
    slope: float,
    first_step: float,
    batch: int,
    *,
    shrink: float = 0.5,
    sufficient_decrease: float = 1e-4,
    max_trials: int = 30,
) -> LineSearchResult:
    """:func:`backtracking` with the trial costs evaluated ``batch`` steps at a time:
    ``costs_at([t_k, t_k * shrink, ...])`` returns their costs, and the first step in
    order that satisfies the Armijo condition is taken. It accepts the same step with the
    same cost as :func:`backtracking` (the steps are the same numbers, each cost depends
    on its step only); a batch only evaluates up to ``batch - 1`` steps more. ``trials``
    counts the steps up to and including the accepted one.
    """
    if not slope < 0:
        return LineSearchResult(0.0, cost0, 0)
    batch = max(1, batch)
    step = first_step
    trial = 0
    while trial < max_trials:
        steps = []
        for _ in range(min(batch, max_trials - trial)):
            steps.append(step)
            step *= shrink
        costs = costs_at(steps)
        for offset, (tried, cost) in enumerate(zip(steps, costs, strict=True)):
            if cost <= cost0 + sufficient_decrease * tried * slope:
                return LineSearchResult(tried, cost, trial + offset + 1)
        trial += len(steps)
    return LineSearchResult(0.0, cost0, max_trials)


@dataclasses.dataclass
class CGState:
    """What nonlinear CG remembers about one variable between steps."""

    previous_grad: Any | None = None
    previous_direction: Any | None = None
    step: float = 1.0
    """Last accepted step length; the next search starts at twice this."""

    def restart(self) -> None:
        self.previous_grad = None
        self.previous_direction = None
