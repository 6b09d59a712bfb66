"""The checks between a gradient and its push: nobody trains on garbage.

A loss or gradient norm that is not finite stops the job before it is pushed (`Garbage`, which
the worker reports as a fatal alarm). A gradient norm far above its recent median is reported
as an alarm line and training goes on: a spike is worth a look, not a stop.
"""
from __future__ import annotations

import logging
import math

import numpy as np

from .session import Session

log = logging.getLogger(__name__)

WARM_UP = 20  # pushes before the median is trusted
RECENT = 50   # pushes the median is taken over
JUMP = 100    # how many times the median a norm must reach to raise an alarm


class Garbage(RuntimeError):
    """A non-finite loss or gradient: the job must stop rather than train on it."""


class Alarms:
    """The loss and gradient-norm checks of one worker, with the norms seen so far."""

    def __init__(self, session: Session):
        self.session = session
        self.norms: list[float] = []

    @property
    def last_norm(self) -> float | None:
        return self.norms[-1] if self.norms else None

    def check_loss(self, value: float, step: int) -> float:
        """`value`, if it is finite."""
        if not math.isfinite(value):
            raise Garbage(f"loss is {value} at step {step}: stopping before pushing it")
        return value

    def check_norm(self, grad: np.ndarray, step: int) -> float:
        """The norm of `grad` (about to be pushed), if it is finite; an alarm line if it jumped."""
        norm = float(np.sqrt(np.dot(grad, grad)))
        if not math.isfinite(norm):
            raise Garbage(f"gradient norm is {norm} at step {step}: stopping before pushing it")
        if len(self.norms) >= WARM_UP:
            typical = float(np.median(self.norms[-RECENT:]))
            if typical > 0 and norm > JUMP * typical:
                self._jumped(norm, typical)
        self.norms.append(norm)
        return norm

    def _jumped(self, norm: float, typical: float) -> None:
        s = self.session
        log.warning("%s: gradient norm %.3g is %.0fx its recent median", s.name, norm, norm / typical)
        s.control.report({"kind": "alarm", "fatal": False, "clock": s.clock,
                          "message": f"gradient norm jumped to {norm:.3g} ({norm / typical:.0f}x median)"})
