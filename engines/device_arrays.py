"""Arrays where an engine runs, bound to its sessions through onnxruntime's IOBinding.

A DeviceArray is an onnxruntime OrtValue on the engine's device: on the CPU it is made over the numpy array's own
memory (no copy; the array is kept and is what `numpy()` returns), on a GPU it is a copy in device memory that
stays there. The decode graph's KV cache is one per layer and kind, bound as both the past input and the present
output of every step, so a step on a GPU moves only the new token's embedding in and the logits row out.
"""

from __future__ import annotations

import numpy as np

from .errors import EngineError


class DeviceArray:
    def __init__(self, value, host: np.ndarray | None, device: str, dtype: np.dtype):
        self.value = value  # the OrtValue
        self.host = host  # on the CPU: the array whose memory `value` is
        self.device = device
        self.dtype = dtype

    @classmethod
    def of(cls, array: np.ndarray, device: str = "cpu", device_id: int = 0) -> "DeviceArray":
        import onnxruntime as ort

        array = np.ascontiguousarray(array)
        value = ort.OrtValue.ortvalue_from_numpy(array, device, device_id)
        return cls(value, array if device == "cpu" else None, device, array.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape())

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numpy(self) -> np.ndarray:
        """The array: on the CPU the very array it was made over; from a GPU a host copy."""
        return self.host if self.host is not None else self.value.numpy()


def bind_feeds(binding, feeds: dict, out: dict, names: list[str], *, engine: str) -> None:
    """Bind `feeds` as inputs and `out` (plus every other output, to host memory) as outputs of `binding`."""
    import onnxruntime as ort

    for name, value in feeds.items():
        if isinstance(value, DeviceArray):
            binding.bind_ortvalue_input(name, value.value)
        else:
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
    for name in names:
        if name not in out:
            binding.bind_output(name)  # to host memory
            continue
        value = out[name]
        if isinstance(value, DeviceArray):
            binding.bind_ortvalue_output(name, value.value)
            continue
        if not value.flags.c_contiguous:
            raise EngineError(f"engine '{engine}': the array for output '{name}' must be C-contiguous")
        binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(value))
