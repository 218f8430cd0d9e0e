"""The engines layer: the package format, the options, and backends opened by name.

    from moai_edge.engines import RuntimeOptions, load_manifest, open_engine

    manifest = load_manifest("pkg/tiny-moai")
    vision = open_engine(manifest, "vision", RuntimeOptions(threads=2))
    features = vision.run({"pixel_values": pixels})
    vision.close()
"""

from . import ort_engine  # noqa: F401  registers the "onnxruntime" backend
from .decoding import DecodingConfig
from .errors import (CheckpointError, EngineError, ExportValidationError, ImageError, InputError, IntegrityError,
                     ManifestError, MissingExtraError, MoaiEdgeError)
from .manifest import Manifest, load_manifest
from .options import DEVICES, RuntimeOptions
from .protocol import Engine, TensorSpec
from .recording import FeedRecorder
from .registry import BACKENDS, backend, open_engine, open_file, synchronize

__all__ = ["BACKENDS", "DEVICES", "CheckpointError", "DecodingConfig", "Engine", "EngineError", "ExportValidationError",
           "FeedRecorder", "ImageError", "InputError",
           "IntegrityError", "Manifest", "ManifestError", "MissingExtraError", "MoaiEdgeError", "RuntimeOptions",
           "TensorSpec", "backend", "load_manifest", "open_engine", "open_file", "synchronize"]
