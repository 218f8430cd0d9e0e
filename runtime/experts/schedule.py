"""How many of an image's independent stages (the experts and the vision tower) run at once.

At most one per core: on CPU each expert engine has one thread, so more at once only adds activations in memory,
not speed. With a memory budget, also no more than fit: the first call runs the stages one at a time and measures
what each adds to the process's peak RSS (runtime.memory.PeakMeter); later calls take the largest k such that the
resident memory plus the k largest stage peaks stay within the budget. When a stage ends, the heap it freed goes
back to the system, so the next stage starts from the resident memory rather than on top of its leftovers.
"""

from __future__ import annotations

import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

from .. import memory


@dataclass
class StageSchedule:
    cores: int
    budget_mb: int | None = None
    peaks_mb: dict[str, float] = field(default_factory=dict)  # measured alone, above the RSS before the stage

    def workers(self, stages: list[str], resident_mb: float | None) -> int:
        """How many of `stages` may run at once now."""
        k = max(1, min(self.cores, len(stages)))
        if self.budget_mb is None:
            return k
        if resident_mb is None or any(s not in self.peaks_mb for s in stages):
            return 1  # measure first (or, without /proc, stay safe)
        largest = sorted((self.peaks_mb[s] for s in stages), reverse=True)
        while k > 1 and resident_mb + sum(largest[:k]) > self.budget_mb:
            k -= 1
        if resident_mb + largest[0] > self.budget_mb:
            warnings.warn(f"memory budget {self.budget_mb} MB: {resident_mb:.0f} MB resident plus the largest stage's "
                          f"{largest[0]:.0f} MB exceed it; running one stage at a time", RuntimeWarning, stacklevel=2)
        return k

    def gate(self, stages: list[str]) -> "StageGate":
        """For one call: the resident memory is read only when a budget needs it."""
        k = self.workers(stages, memory.rss_mb() if self.budget_mb is not None else None)
        return StageGate(self, threading.BoundedSemaphore(k), measure=k == 1 and self.budget_mb is not None)


@dataclass
class StageGate:
    """Admits at most k stages at a time for one call; measures each stage's peak when they run one at a time."""

    schedule: StageSchedule
    slots: threading.BoundedSemaphore
    measure: bool

    @contextmanager
    def stage(self, name: str):
        with self.slots:
            try:
                if not self.measure:
                    yield
                    return
                with memory.PeakMeter() as meter:
                    yield
                if meter.added_mb is not None:
                    self.schedule.peaks_mb[name] = max(self.schedule.peaks_mb.get(name, 0.0), meter.added_mb)
            finally:
                memory.release_freed()  # what the stage freed goes back before the next one adds its own
