"""The ONNX Runtime backend of the Engine protocol (anchor: Polygraphy's OnnxrtRunner)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import EngineError
from .protocol import TensorSpec, check_feeds
from .shared_weights import SharedWeights

_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


@dataclass
class OrtOptions:
    providers: list = field(default_factory=lambda: ["CPUExecutionProvider"])
    intra_op_threads: int = 0  # 0 = onnxruntime's default (one per physical core)
    inter_op_threads: int = 1
    allow_spinning: bool = False  # spinning threads burn the cores other sessions need
    check_inputs: bool = True
    disable_prepacking: bool | None = None  # None: off exactly when weights are shared
    graph_optimization: str = "all"  # disable | basic | extended | all
    memory_arena: bool = True  # False: activations go back to the system after each run instead of staying pooled


def session_options(options: OrtOptions, shared: SharedWeights | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.enable_cpu_mem_arena = options.memory_arena
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.allow_spinning else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1" if options.allow_spinning else "0")
    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if options.graph_optimization not in levels:
        raise EngineError(f"graph_optimization must be one of {sorted(levels)}, found '{options.graph_optimization}'")
    so.graph_optimization_level = levels[options.graph_optimization]
    no_prepack = shared is not None if options.disable_prepacking is None else options.disable_prepacking
    if no_prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
    if shared is not None:
        shared.add_to(so)
    return so


def _spec(arg) -> TensorSpec:
    dims = tuple(d if isinstance(d, int) else str(d) for d in arg.shape)
    return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, arg.type), dims)


class OrtEngine:
    def __init__(self, session, *, name: str, check_inputs: bool, shared: SharedWeights | None):
        self.session = session
        self.name = name
        self.check_inputs = check_inputs
        self.shared = shared  # held so the mapped weights outlive the session
        self._inputs = [_spec(a) for a in session.get_inputs()]
        self._outputs = [_spec(a) for a in session.get_outputs()]

    @classmethod
    def load(cls, path: str | Path, *, options: OrtOptions | None = None, shared: SharedWeights | None = None,
             name: str | None = None) -> "OrtEngine":
        import onnxruntime as ort

        options = options or OrtOptions()
        path = Path(path)
        if not path.is_file():
            raise EngineError(f"ONNX file '{path}' does not exist")
        available = ort.get_available_providers()
        missing = [p for p in options.providers if (p[0] if isinstance(p, tuple) else p) not in available]
        if missing:
            raise EngineError(f"execution providers {missing} are not available in this onnxruntime build; it has {available}")
        try:
            session = ort.InferenceSession(str(path), session_options(options, shared), providers=list(options.providers))
        except Exception as exc:  # onnxruntime raises its own untyped errors (Fail, InvalidGraph, ...)
            raise EngineError(f"onnxruntime could not load '{path}': {exc}") from exc
        return cls(session, name=name or path.stem, check_inputs=options.check_inputs, shared=shared)

    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    def outputs(self) -> list[TensorSpec]:
        return list(self._outputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.session is None:
            raise EngineError(f"engine '{self.name}' is closed")
        if self.check_inputs:
            check_feeds(self._inputs, feeds, engine=self.name)
        names = [o.name for o in self._outputs]
        try:
            values = self.session.run(names, feeds)
        except Exception as exc:
            raise EngineError(f"engine '{self.name}' failed to run: {exc}") from exc
        return dict(zip(names, values))

    def metadata(self) -> dict[str, str]:
        """The graph's custom metadata (e.g. PP-OCR's character dictionary)."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def close(self) -> None:
        self.session = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
