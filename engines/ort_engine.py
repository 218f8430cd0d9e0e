"""The ONNX Runtime backend of the Engine protocol (anchor: Polygraphy's OnnxrtRunner).

RuntimeOptions are translated here: the device becomes execution providers (on a GPU with the
engine's own CUDA stream), threads the intra-op pool, memory_arena the CPU arena; spinning threads
are off (they burn the cores other sessions need), and prepacking is off exactly when weights are
shared (or each session keeps its own repacked copy).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .cuda_streams import CudaStream, with_stream
from .errors import EngineError
from .options import DEVICES, RuntimeOptions
from .protocol import TensorSpec, check_feeds
from .registry import Graph, backend
from .resident_pages import drop_resident_pages
from .shared_weights import SharedWeights

EXECUTION_PROVIDERS = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"  # onnxruntime >= 1.21
_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def providers(options: RuntimeOptions, stream: CudaStream | None) -> list:
    """The execution providers of `options.device`, the GPU ones on `options.device_id` and the engine's stream."""
    out = [(p, {"device_id": str(options.device_id)}) if p != "CPUExecutionProvider" else p
           for p in EXECUTION_PROVIDERS[options.device]]
    return with_stream(out, stream.handle) if stream is not None else out


def bytes_with_external_data() -> bool:
    """Whether this onnxruntime resolves the external data of a graph given as bytes in a folder we name."""
    import onnxruntime as ort

    major, minor = (int(part) for part in ort.__version__.split(".")[:2])
    return (major, minor) >= (1, 21)


def session_options(options: RuntimeOptions, shared: SharedWeights | None, folder: Path | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = options.threads
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = options.memory_arena
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if folder is not None:
        so.add_session_config_entry(EXTERNAL_DATA_FOLDER, str(folder))
    if shared is not None:
        so.add_session_config_entry("session.disable_prepacking", "1")
        shared.add_to(so)
    return so


def shrinking_arena():
    """Run options that hand the CPU arena's unused chunks back at the end of each run, so what a run's activations
    took does not stay resident after it (the arena still serves the allocations within a run)."""
    import onnxruntime as ort

    run_options = ort.RunOptions()
    run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return run_options


def _spec(arg) -> TensorSpec:
    dims = tuple(d if isinstance(d, int) else str(d) for d in arg.shape)
    return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, arg.type), dims)


@backend("onnxruntime")
class OrtEngine:
    devices = DEVICES

    def __init__(self, session, *, name: str, check_inputs: bool, shared: SharedWeights | None,
                 stream: CudaStream | None, run_options=None):
        self.session = session
        self.run_options = run_options
        self.name = name
        self.check_inputs = check_inputs
        self.shared = shared  # held so the mapped weights outlive the session
        self.stream = stream  # owned: synchronized and destroyed by close()
        self._inputs = [_spec(a) for a in session.get_inputs()]
        self._outputs = [_spec(a) for a in session.get_outputs()]

    @classmethod
    def check(cls, options: RuntimeOptions) -> None:
        import onnxruntime as ort

        needed, available = EXECUTION_PROVIDERS[options.device][0], ort.get_available_providers()
        if needed not in available:
            raise EngineError(f"device '{options.device}' needs onnxruntime's {needed}, which this onnxruntime build "
                              f"does not have (it has {available}); on a machine with an NVIDIA GPU install "
                              f"'moai-edge[gpu]'")

    @classmethod
    def open(cls, graph: Graph, options: RuntimeOptions, *, shared: SharedWeights | None) -> "OrtEngine":
        import onnxruntime as ort

        by_path = graph.data is None or (graph.external_data and not bytes_with_external_data())
        folder = graph.path.parent if graph.external_data and not by_path else None  # where its external data lies
        stream = CudaStream(graph.name, options.device_id) if options.device != "cpu" else None
        try:
            session = ort.InferenceSession(str(graph.path) if by_path else graph.data,
                                           session_options(options, shared, folder),
                                           providers=providers(options, stream))
        except Exception as exc:  # onnxruntime raises its own untyped errors (Fail, InvalidGraph, ...)
            if stream is not None:
                stream.close()
            raise EngineError(f"onnxruntime could not load '{graph.path}' ({graph.name}): {exc}") from exc
        drop_resident_pages(graph.external_files)  # what prepacking read and will not read again
        return cls(session, name=graph.name, check_inputs=options.check_inputs, shared=shared, stream=stream,
                   run_options=shrinking_arena() if options.memory_arena and options.device == "cpu" else None)

    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    def outputs(self) -> list[TensorSpec]:
        return list(self._outputs)

    def run(self, feeds: dict[str, np.ndarray], out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        if self.session is None:
            raise EngineError(f"engine '{self.name}' is closed")
        if self.check_inputs:
            check_feeds(self._inputs, feeds, engine=self.name)
        names = [o.name for o in self._outputs]
        try:
            if not out:
                return dict(zip(names, self.session.run(names, feeds, self.run_options)))
            return self.run_bound(feeds, out, names)
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"engine '{self.name}' failed to run: {exc}") from exc

    def run_bound(self, feeds: dict[str, np.ndarray], out: dict[str, np.ndarray],
                  names: list[str]) -> dict[str, np.ndarray]:
        """onnxruntime's IOBinding over the callers' arrays: inputs and the outputs in `out` are used where they lie
        (host memory), the other outputs come back as new arrays."""
        import onnxruntime as ort

        unknown = sorted(set(out) - set(names))
        if unknown:
            raise EngineError(f"engine '{self.name}': cannot write outputs {unknown}; its outputs are {names}")
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in names:
            if name in out:
                if not out[name].flags.c_contiguous:
                    raise EngineError(f"engine '{self.name}': the array for output '{name}' must be C-contiguous")
                binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(out[name]))
            else:
                binding.bind_output(name)
        self.session.run_with_iobinding(binding, self.run_options)
        values = binding.get_outputs()
        return {name: out[name] if name in out else value.numpy() for name, value in zip(names, values)}

    def metadata(self) -> dict[str, str]:
        """The graph's custom metadata (e.g. PP-OCR's character dictionary)."""
        if self.session is None:
            raise EngineError(f"engine '{self.name}' is closed")
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def synchronize(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()

    def close(self) -> None:
        """Waits for the engine's stream, releases the session, then destroys the stream."""
        if self.stream is not None:
            self.stream.synchronize()
        self.session = None
        self.shared = None
        if self.stream is not None:
            self.stream.close()
            self.stream = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
