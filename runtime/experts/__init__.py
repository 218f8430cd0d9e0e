"""The vision experts: one file each, registered by name (runtime.experts.registry), imported here in registry order.

Public names for the other layers (the PyTorch reference mirrors the experts through them): the registry, the
runner, the result types and each expert's configuration and pre/post-processing steps.
"""

from . import panoptic, detector, scene_graph, ocr  # noqa: F401  - registry order: panoptic first
from .detector import DetectorConfig, post_process_detections, preprocess_detector
from .ocr import OcrConfig, OcrReader
from .outputs import Detection, OcrLine, PanopticResult, SceneGraphResult, Segment
from .panoptic import PanopticConfig, post_process_panoptic, preprocess_panoptic
from .registry import EXPERTS, ExpertContext, config_from, expert
from .results import ExpertResults
from .runner import Experts, attach_all
from .scene_graph import (HEADS, LOGITS, MASK_INPUTS, SceneGraphConfig, mask_size, preprocess_scene_graph, relations_of,
                          top_triplets)

__all__ = ["EXPERTS", "HEADS", "LOGITS", "MASK_INPUTS", "Detection", "DetectorConfig", "ExpertContext", "ExpertResults",
           "Experts", "OcrConfig", "OcrLine", "OcrReader", "PanopticConfig", "PanopticResult", "SceneGraphConfig",
           "SceneGraphResult", "Segment", "attach_all", "config_from", "expert", "mask_size", "post_process_detections",
           "post_process_panoptic", "preprocess_detector", "preprocess_panoptic", "preprocess_scene_graph",
           "relations_of", "top_triplets"]
