"""The torch-free runtime: `from moai_edge.runtime import Pipeline, Request, DecodingConfig, RuntimeOptions`."""

from moai_edge.engines.decoding import DecodingConfig
from moai_edge.engines.options import RuntimeOptions

from .captioner import Captioner, CaptionRecord
from .families import AuxInputs
from .live import LatestFrameRunner
from .pipeline import Pipeline
from .request import Request, Result

__all__ = ["AuxInputs", "Captioner", "CaptionRecord", "DecodingConfig", "LatestFrameRunner", "Pipeline", "Request",
           "Result", "RuntimeOptions"]
