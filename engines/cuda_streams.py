"""One CUDA stream per engine that runs beside others (ONNX Runtime's CUDA / TensorRT EP `user_compute_stream`).

The pipeline runs the experts and the vision tower of an image at the same time from a thread pool.
On a GPU each of those sessions gets its own non-blocking stream created here with cuda-python, so
their kernels overlap instead of queueing on the legacy default stream. Synchronization: ONNX Runtime
synchronizes a session's stream before `run` returns its outputs as host arrays, so each `run` is
where that stream meets the host, and the pipeline's join of the concurrent futures is the one place
where the streams meet each other. Nothing else waits on a stream; `synchronize()` is for `close()`
and for benchmarks that read the clock.
"""

from __future__ import annotations

from .errors import EngineError, require

STREAM_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


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


class CudaStreams:
    """Named non-blocking CUDA streams on one device, destroyed by `close()`."""

    def __init__(self, device_id: int = 0):
        self.cudart = require("cuda.bindings.runtime", "gpu")
        self.check(self.cudart.cudaSetDevice(device_id), f"select CUDA device {device_id}")
        self.streams: dict[str, object] = {}

    def check(self, result, what: str):
        err, *value = result if isinstance(result, tuple) else (result,)
        if err != self.cudart.cudaError_t.cudaSuccess:
            _, msg = self.cudart.cudaGetErrorString(err)
            raise EngineError(f"could not {what}: CUDA error {int(err)} ({msg.decode() if isinstance(msg, bytes) else msg})")
        return value[0] if value else None

    def stream(self, name: str) -> int:
        """The handle of stream `name` (created on first use), as `user_compute_stream` takes it."""
        if name not in self.streams:
            self.streams[name] = self.check(self.cudart.cudaStreamCreateWithFlags(self.cudart.cudaStreamNonBlocking),
                                            f"create a CUDA stream for '{name}'")
        return int(self.streams[name])

    def providers_for(self, name: str, providers: list) -> list:
        return with_stream(providers, self.stream(name)) if uses_gpu(providers) else list(providers)

    def synchronize(self) -> None:
        for name, s in self.streams.items():
            self.check(self.cudart.cudaStreamSynchronize(s), f"synchronize the stream of '{name}'")

    def close(self) -> None:
        self.synchronize()
        for name, s in self.streams.items():
            self.check(self.cudart.cudaStreamDestroy(s), f"destroy the stream of '{name}'")
        self.streams.clear()
