"""Decoding: the backbone (features + aux inputs + questions -> answers), the prompt and tokenizer, prefill and the
KV cache, the generation loop (greedy, sampling, beam search, teacher forcing) and streaming text."""

from .backbone import Answer, Backbone, Scored
from .decoder import DecoderRunner, input_dtypes
from .generation import generate, log_softmax, teacher_force, warp
from .kv_cache import KVCache
from .prefill_inputs import PrefillRequest, assemble_prefill
from .prompts import PromptIds, build_prompt, cut_answer, prompt_text
from .text_stream import TextStream
from .tokenizer import Tokenizer

__all__ = ["Answer", "Backbone", "DecoderRunner", "KVCache", "PrefillRequest", "PromptIds", "Scored", "TextStream",
           "Tokenizer", "assemble_prefill", "build_prompt", "cut_answer", "generate", "input_dtypes", "log_softmax",
           "prompt_text", "teacher_force", "warp"]
