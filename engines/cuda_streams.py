"""One CUDA stream per engine on a GPU (ONNX Runtime's CUDA / TensorRT EP `user_compute_stream`).

The pipeline runs the experts and the vision tower of an image at the same time from a thread pool.
On a GPU each engine owns a non-blocking stream created here with cuda-python when it opens and
destroyed when it closes, so the kernels of concurrent engines overlap instead of queueing on the
legacy default stream. Synchronization: ONNX Runtime synchronizes a session's stream before `run`
returns its outputs as host arrays, so each `run` is where that stream meets the host, and the
pipeline's join of the concurrent futures is where the streams meet each other. Nothing else waits
on a stream; `synchronize()` is for `close()` and for benchmarks that read the clock.
"""

from __future__ import annotations

from .errors import EngineError, require
from .providers import CUDA, TENSORRT

STREAM_PROVIDERS = (CUDA, TENSORRT)


def with_stream(providers: list, stream: int) -> list:
    """`providers` with every CUDA/TensorRT entry given `user_compute_stream` (other options kept)."""
    out = []
    for p in providers:
        name, opts = (p if isinstance(p, tuple) else (p, {}))
        if name in STREAM_PROVIDERS:
            out.append((name, {**opts, "user_compute_stream": str(stream)}))
        else:
            out.append(p)
    return out


def uses_gpu(providers: list) -> bool:
    return any((p[0] if isinstance(p, tuple) else p) in STREAM_PROVIDERS for p in providers)


class CudaStream:
    """A non-blocking CUDA stream on one device, owned by one engine; `close()` synchronizes and destroys it."""

    def __init__(self, name: str, device_id: int = 0):
        self.name = name
        self.cudart = require("cuda.bindings.runtime", "gpu")
        self.check(self.cudart.cudaSetDevice(device_id), f"select CUDA device {device_id}")
        self.stream = self.check(self.cudart.cudaStreamCreateWithFlags(self.cudart.cudaStreamNonBlocking),
                                 f"create a CUDA stream for '{name}'")

    def check(self, result, what: str):
        err, *value = result if isinstance(result, tuple) else (result,)
        if err != self.cudart.cudaError_t.cudaSuccess:
            _, msg = self.cudart.cudaGetErrorString(err)
            raise EngineError(f"could not {what}: CUDA error {int(err)} "
                              f"({msg.decode() if isinstance(msg, bytes) else msg})")
        return value[0] if value else None

    @property
    def handle(self) -> int:
        """The stream as `user_compute_stream` takes it."""
        if self.stream is None:
            raise EngineError(f"the CUDA stream of '{self.name}' is closed")
        return int(self.stream)

    def synchronize(self) -> None:
        if self.stream is not None:
            self.check(self.cudart.cudaStreamSynchronize(self.stream), f"synchronize the stream of '{self.name}'")

    def close(self) -> None:
        if self.stream is None:
            return
        stream, self.stream = self.stream, None
        self.check(self.cudart.cudaStreamSynchronize(stream), f"synchronize the stream of '{self.name}'")
        self.check(self.cudart.cudaStreamDestroy(stream), f"destroy the stream of '{self.name}'")
