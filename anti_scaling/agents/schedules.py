"""How the loss changes over training: weight schedules, temperature, TAID's target.

Steps are ParlAI's optimizer updates (``_number_training_updates``), restored on
resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

Schedule = tuple[tuple[int, float], ...]


def scheduled(schedule: Schedule | None, step: int, default: float) -> float:
    """Piecewise-linear interpolation of ``schedule`` at ``step`` (``default`` if none).

    ``schedule`` is ``((step, value), ...)``; constant before the first and after
    the last point.
    """
    if not schedule:
        return default
    points = sorted(schedule)
    if step <= points[0][0]:
        return points[0][1]
    for (s0, w0), (s1, w1) in zip(points, points[1:]):
        if step <= s1:
            return w0 + (w1 - w0) * (step - s0) / max(1, s1 - s0)
    return points[-1][1]


def annealed_temperature(
    step: int, final: float, start: float | None, steps: int
) -> float:
    """Annealing-KD (Jafari et al. 2021): ``T(s) = T_max + (T - T_max) min(1, s / N)``.

    ``start`` is ``T_max`` (None: no annealing, ``final`` throughout), ``steps`` ``N``.
    """
    if not start or steps <= 0:
        return final
    progress = min(1.0, step / steps)
    return start + (final - start) * progress


def handed_over_share(step: int, steps: int) -> float:
    """How far the hand-over from teacher to labels is at ``step``: ``min(1, s / N)``.

    ``--handover-steps N``: the distillation terms are weighted by ``1 -`` this
    share, so from step ``N`` on the student learns from the labels alone (0: off).
    """
    if steps <= 0:
        return 0.0
    return min(1.0, max(0, step) / steps)


@dataclass
class InterpolationSchedule:
    """TAID's interpolation ``t`` (Shing et al. 2025), from ``start`` towards ``end``.

    The linear schedule ``t_lin(s) = start + (end - start) min(1, s / steps)`` is a
    floor. With ``adaptive``, after each training step with objective value
    ``J_n`` the schedule also moves by itself, faster while the objective still
    falls quickly::

        delta_n = (J_{n-1} - J_n) / (J_{n-1} + 1e-8)
        m_n     = momentum * m_{n-1} + (1 - momentum) * delta_n
        t_{n+1} = min(end, max(t_lin(n + 1), t_n + rate * sigmoid(m_n) * (1 - t_n)))

    Only the first value of each step counts (with ``--update-freq`` a step
    sees several batches). Its state is saved with the checkpoint.
    """

    start: float = 0.4
    end: float = 1.0
    steps: int = 1000
    adaptive: bool = True
    rate: float = 5e-4
    momentum: float = 0.99
    current: float | None = None
    trend: float = 0.0
    last_value: float | None = None
    last_step: int | None = None

    def linear(self, step: int) -> float:
        progress = min(1.0, max(0, step) / max(1, self.steps))
        return self.start + (self.end - self.start) * progress

    def value(self, step: int) -> float:
        """``t`` at training ``step``."""
        floor = self.linear(step)
        if not self.adaptive or self.current is None:
            return floor
        return min(self.end, max(floor, self.current))

    def update(self, step: int, objective: float) -> None:
        """Record the objective's value at ``step`` (adaptive schedules only)."""
        if not self.adaptive or not math.isfinite(objective) or step == self.last_step:
            return
        self.last_step = step
        t = self.value(step)
        if self.last_value is not None:
            delta = (self.last_value - objective) / (self.last_value + 1e-8)
            self.trend = self.momentum * self.trend + (1 - self.momentum) * delta
            sigmoid = 1 / (1 + math.exp(-self.trend))
            t = t + self.rate * sigmoid * (1 - t)
        self.current = min(self.end, max(self.linear(step + 1), t))
        self.last_value = objective

    def state_dict(self) -> dict[str, Any]:
        return {
            'current': self.current,
            'trend': self.trend,
            'last_value': self.last_value,
            'last_step': self.last_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current = state.get('current')
        self.trend = float(state.get('trend') or 0.0)
        self.last_value = state.get('last_value')
        self.last_step = state.get('last_step')
