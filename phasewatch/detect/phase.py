"""The phase state machine of one run: ``warmup`` -> ``execution`` -> ``planning``.

It only records transitions; the evidence comes from the detectors in
:class:`~phasewatch.detect.run.RunDetector`. ``planning`` is absorbing: once the shift is
confirmed HICRA reweighting ramps in, and flipping it back and forth on noise would be worse
than either choice. A run that stays in ``execution`` long after its execution signals
flattened is reported by :attr:`PhaseStateMachine.stalled` ("never pivoted so far"), a hint to
users that reweighting has not been switched on for a reason.
"""

from __future__ import annotations

from phasewatch.events import EXECUTION, PLANNING, WARMUP


class PhaseStateMachine:
    """``observe(step, per_class_seen)`` each step; ``shift(step, onset)`` once confirmed."""

    def __init__(self, warmup_steps: int = 10, stall_steps: int = 200) -> None:
        self.warmup_steps = warmup_steps
        self.stall_steps = stall_steps
        self.reset()

    def reset(self) -> None:
        self.phase = WARMUP
        self.shift_step: int | None = None
        self.onset: int | None = None
        self.execution_since: int | None = None
        self._per_class_count = 0
        self._last_step: int | None = None

    def observe(self, step: int, per_class_seen: bool) -> None:
        """Count a step; leave ``warmup`` once enough per-class observations arrived."""
        self._last_step = step
        if per_class_seen:
            self._per_class_count += 1
        if self.phase == WARMUP and self._per_class_count >= self.warmup_steps:
            self.phase = EXECUTION
            self.execution_since = step

    def shift(self, step: int, onset: int) -> bool:
        """Enter ``planning``; return False if already there (the shift happens once)."""
        if self.phase == PLANNING:
            return False
        self.phase = PLANNING
        self.shift_step = step
        self.onset = min(onset, step)
        return True

    @property
    def stalled(self) -> bool:
        """In ``execution`` for ``stall_steps`` or more without a shift."""
        return (self.phase == EXECUTION and self.execution_since is not None
                and self._last_step is not None
                and self._last_step - self.execution_since >= self.stall_steps)
