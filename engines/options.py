"""The one options object of the runtime; each backend translates it inside engines/."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields

from .errors import InputError
from .recording import FeedRecorder

DEVICES = ("cpu", "cuda", "tensorrt")


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class RuntimeOptions:
    """The only options type the runtime knows; backends translate it inside engines/."""

    device: str = "cpu"
    backend: str = "onnxruntime"  # a key of engines.registry.BACKENDS
    threads: int = 0  # intra-op threads per engine; 0 = the backend's default
    concurrent: bool = True  # experts and vision tower at the same time (threads on CPU, streams on GPU)
    expert_batch: int | None = None  # images per expert graph run; None: 1 on cpu, the whole batch on GPU
    memory_arena: bool = True
    memory_budget_mb: int | None = None  # run no more experts at once than fit (runtime.experts.schedule)
    image_cache_mb: int = 0  # keep each image's features and expert results for its next question (runtime.image_cache)
    verify_hashes: bool = True
    check_inputs: bool = True
    device_id: int = 0
    allow_cpu_fallback: bool = False  # GPU providers that cannot load: run on the CPU (warned) instead of failing
    engine_cache_dir: str | None = None  # TensorRT engine and timing caches (engines.tensorrt: default ~/.cache/...)
    record_feeds: FeedRecorder | None = field(default=None, compare=False, repr=False)  # engines.recording

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise InputError(f"device: expected one of {list(DEVICES)}, found {self.device!r}")
        if not isinstance(self.backend, str) or not self.backend:
            raise InputError(f"backend: expected the name of a backend such as 'onnxruntime', found {self.backend!r}")
        cores = usable_cores()
        if not is_int(self.threads) or not 0 <= self.threads <= cores:
            raise InputError(f"threads: expected an integer from 0 to {cores} (0 = the backend's default; this machine "
                             f"has {cores} usable cores), found {self.threads!r}")
        if self.expert_batch is not None and (not is_int(self.expert_batch) or self.expert_batch < 1):
            raise InputError(f"expert_batch: expected None (1 on cpu, the whole batch on a GPU) or an integer >= 1, "
                             f"found {self.expert_batch!r}")
        if self.memory_budget_mb is not None and (not is_int(self.memory_budget_mb) or self.memory_budget_mb < 1):
            raise InputError(f"memory_budget_mb: expected None (no budget) or a number of MB >= 1, "
                             f"found {self.memory_budget_mb!r}")
        if not is_int(self.image_cache_mb) or self.image_cache_mb < 0:
            raise InputError(f"image_cache_mb: expected an integer >= 0 (0 = no cache), found {self.image_cache_mb!r}")
        if not is_int(self.device_id) or self.device_id < 0:
            raise InputError(f"device_id: expected an integer >= 0, found {self.device_id!r}")
        if self.record_feeds is not None and not isinstance(self.record_feeds, FeedRecorder):
            raise InputError(f"record_feeds: expected None or an engines.recording.FeedRecorder, "
                             f"found {type(self.record_feeds).__name__}")
        if self.engine_cache_dir is not None and not (isinstance(self.engine_cache_dir, str) and self.engine_cache_dir):
            raise InputError(f"engine_cache_dir: expected None or a folder path, found {self.engine_cache_dir!r}")
        for name in ("concurrent", "memory_arena", "verify_hashes", "check_inputs", "allow_cpu_fallback"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name}: expected True or False, found {getattr(self, name)!r}")

    def replace(self, **changes) -> "RuntimeOptions":
        """A copy with `changes` applied and validated."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise InputError(f"runtime options: expected fields among {[f.name for f in fields(self)]}, "
                             f"found unexpected {unknown}")
        return dataclasses.replace(self, **changes)
