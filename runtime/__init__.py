"""The torch-free runtime: `from moai_edge.runtime import Pipeline, Request, DecodingConfig, RuntimeOptions`.

These names are the runtime's public surface: export and bench use the runtime through them (and through the
wings' own public names: moai_edge.runtime.experts, .decoding, .caption), never through a module inside it.
"""

from moai_edge.engines.decoding import DecodingConfig
from moai_edge.engines.options import RuntimeOptions

from .asking import Asking
from .caption import Captioner, CaptionRecord
from .contracts import AuxInputs, OnToken, ShouldStop
from .decoding import PromptIds, Scored, TextStream, Tokenizer, log_softmax
from .experts import MASK_INPUTS, ExpertResults, PanopticConfig, post_process_panoptic
from .experts.verbalize import (COLLAVO_EMPTY_PREFIX, EMPTY_VERBALIZATION, OCR_PREFIX, RELATION_PREFIX, SEGMENT_PREFIX,
                                clean_class, verbalize_ocr)
from .families import FAMILIES, Family, FamilyHead, colour_map_pixels, family_of
from .images import load_image, preprocess_image
from .limits import check_batch_size, check_generation, check_range
from .live import FrameResult, LatestFrameRunner, LiveStats
from .observation import Observation
from .pipeline import Pipeline
from .request import DEFAULT_QUESTION, Request, Result
from .samples import sample_image
from .timer import Timer

__all__ = [
    # asking
    "Asking", "AuxInputs", "DEFAULT_QUESTION", "DecodingConfig", "Observation", "OnToken", "Pipeline", "Request",
    "Result", "RuntimeOptions", "Scored", "ShouldStop", "TextStream", "Timer",
    # captioning and the robot's loop
    "CaptionRecord", "Captioner", "FrameResult", "LatestFrameRunner", "LiveStats",
    # the bounds a caller's asks are checked against
    "check_batch_size", "check_generation", "check_range",
    # contracts with the PyTorch side: the families, the verbalizer's texts, the experts' shared steps
    "COLLAVO_EMPTY_PREFIX", "EMPTY_VERBALIZATION", "ExpertResults", "FAMILIES", "Family", "FamilyHead", "MASK_INPUTS",
    "OCR_PREFIX", "PanopticConfig", "PromptIds", "RELATION_PREFIX", "SEGMENT_PREFIX", "Tokenizer", "clean_class",
    "colour_map_pixels", "family_of", "load_image", "log_softmax", "post_process_panoptic", "preprocess_image",
    "sample_image", "verbalize_ocr",
]
