"""The ONNX Runtime backend of the Engine protocol (anchor: Polygraphy's OnnxrtRunner).

RuntimeOptions are translated here: the device becomes execution providers (on a GPU with the
engine's own CUDA stream; TensorRT's configured from the manifest, engines.tensorrt), threads the
intra-op pool, memory_arena the CPU arena; spinning threads are off (they burn the cores other
sessions need), and prepacking is off exactly when weights are shared (or each session keeps its own
repacked copy). A session that did not get the provider its device asks for is refused unless
`allow_cpu_fallback` (engines.providers). Arrays may live on the engine's device (engines.device_arrays).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

from . import tensorrt
from .cuda_streams import CudaStream, with_stream
from .device_arrays import DeviceArray, bind_feeds
from .errors import EngineError
from .options import DEVICES, RuntimeOptions
from .protocol import TensorSpec, check_feeds
from .providers import (CPU, CUDA, EXECUTION_PROVIDERS, TENSORRT, CpuFallbackWarning, check_placement, opening_log,
                        provider_names, wanted_provider)
from .registry import Graph, backend
from .resident_pages import drop_resident_pages
from .shared_weights import SharedWeights
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"  # onnxruntime >= 1.21
_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def providers(options: RuntimeOptions, stream: CudaStream | None, plan: tensorrt.TensorrtPlan | None = None,
              cache_dir=None) -> list:
    """The execution providers of `options.device`, the GPU ones on `options.device_id` and the engine's stream;
    TensorRT's configured from `plan` (a graph the plan does not send to TensorRT gets CUDA's and the CPU's)."""
    build = plan is None or plan.build
    out = []
    for p in provider_names(options.device, tensorrt=build):
        if p == TENSORRT and plan is not None:
            out.append((p, tensorrt.provider_options(plan, device_id=options.device_id, cache_dir=cache_dir)))
        elif p != CPU:
            out.append((p, {"device_id": str(options.device_id)}))
        else:
            out.append(p)
    return with_stream(out, stream.handle) if stream is not None else out


def new_session(model, so, provider_list: list):
    """onnxruntime's InferenceSession (the seam tests replace to make a provider fail the way it really does)."""
    import onnxruntime as ort

    return ort.InferenceSession(model, so, providers=provider_list)


def open_stream(name: str, options: RuntimeOptions) -> CudaStream | None:
    """The engine's CUDA stream; with `allow_cpu_fallback`, None (and a warning) where none can be made."""
    if options.device == "cpu":
        return None
    try:
        return CudaStream(name, options.device_id)
    except EngineError as exc:
        if not options.allow_cpu_fallback:
            raise
        warnings.warn(f"device '{options.device}': no CUDA stream for '{name}' ({exc})", CpuFallbackWarning,
                      stacklevel=3)
        return None


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
                 stream: CudaStream | None, run_options=None, device_id: int = 0):
        self.session = session
        self.providers = list(session.get_providers())  # where it runs, as checked when it opened
        self.device = ("cuda", device_id) if {CUDA, TENSORRT} & set(self.providers) else ("cpu", 0)
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
        if needed in available:
            return
        said = (f"device '{options.device}' needs onnxruntime's {needed}, which this onnxruntime build does not have "
                f"(it has {available})")
        if options.allow_cpu_fallback:
            warnings.warn(f"{said}; running on the CPU (--allow-cpu-fallback)", CpuFallbackWarning, stacklevel=3)
            return
        raise EngineError(f"{said}; on a machine with an NVIDIA GPU install 'moai-edge[gpu]' (onnxruntime-gpu alone: "
                          f"pip uninstall onnxruntime first), or pass --allow-cpu-fallback")

    @classmethod
    def open(cls, graph: Graph, options: RuntimeOptions, *, shared: SharedWeights | None) -> "OrtEngine":
        by_path = graph.data is None or (graph.external_data and not bytes_with_external_data())
        folder = graph.path.parent if graph.external_data and not by_path else None  # where its external data lies
        stream = open_stream(graph.name, options)
        plan = graph.tensorrt if options.device == "tensorrt" else None
        cache_dir = tensorrt_cache_dir(plan, options) if plan is not None and plan.build else None
        try:
            with opening_log(options.device != "cpu") as log:
                try:
                    session = new_session(str(graph.path) if by_path else graph.data,
                                          session_options(options, shared, folder),
                                          providers(options, stream, plan, cache_dir))
                except Exception as exc:  # onnxruntime raises its own untyped errors (Fail, InvalidGraph, ...)
                    raise EngineError(f"onnxruntime could not load '{graph.path}' ({graph.name}): {exc}") from exc
            check_placement(session.get_providers(), device=options.device, name=graph.name, log=log.text,
                            wanted=wanted_provider(options.device, tensorrt=plan is None or plan.build),
                            allow_cpu_fallback=options.allow_cpu_fallback)
        except EngineError:
            if stream is not None:
                stream.close()
            raise
        if log.text:
            sys.stderr.write(log.text)  # what onnxruntime said while the session opened, kept visible
        drop_resident_pages(graph.external_files)  # what prepacking read and will not read again
        return cls(session, name=graph.name, check_inputs=options.check_inputs, shared=shared, stream=stream,
                   run_options=shrinking_arena() if options.memory_arena and options.device == "cpu" else None,
                   device_id=options.device_id)

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

    def run_bound(self, feeds: dict, out: dict, names: list[str]) -> dict:
        """onnxruntime's IOBinding: inputs and the outputs in `out` are used where they lie (numpy arrays in host
        memory, DeviceArrays on this engine's device; an array may be both an input and an output, the KV cache),
        the other outputs come back as new host arrays (the logits row)."""
        unknown = sorted(set(out) - set(names))
        if unknown:
            raise EngineError(f"engine '{self.name}': cannot write outputs {unknown}; its outputs are {names}")
        binding = self.session.io_binding()
        bind_feeds(binding, feeds, out, names, engine=self.name)
        self.session.run_with_iobinding(binding, self.run_options)
        binding.synchronize_outputs()
        values = binding.get_outputs()
        return {name: out[name] if name in out else value.numpy() for name, value in zip(names, values)}

    def device_array(self, array: np.ndarray) -> DeviceArray:
        """`array` where this engine runs: on the CPU an OrtValue over the array's own memory, on a GPU a copy in
        device memory. Bound as an input and as an output of `run`, it is read and written in place."""
        return DeviceArray.of(array, *self.device)

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


def tensorrt_cache_dir(plan: tensorrt.TensorrtPlan, options: RuntimeOptions):
    """The engine and timing caches' folder of the plan's package on this GPU and TensorRT version."""
    from .platform_info import gpu_name, tensorrt_version

    gpu, trt = gpu_name(options.device_id), tensorrt_version()
    if gpu.value is None or trt.value is None:
        raise EngineError(f"device 'tensorrt': expected a GPU and TensorRT 10 to key the engine cache, found GPU "
                          f"{gpu}, TensorRT {trt}")
    return tensorrt.device_folder(tensorrt.cache_root(options.engine_cache_dir), plan.package_id, gpu.value, trt.value)
