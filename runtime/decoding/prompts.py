"""The reference's prompt: system text ending in `<image>`, then the user turn in one of its templates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moai_edge.engines.errors import InputError
from moai_edge.engines.manifest import PromptConfig

from .tokenizer import Tokenizer


@dataclass
class PromptIds:
    input_ids: np.ndarray  # (T,) int64 with BOS first and exactly one `<image>` id
    image_pos: int


def prompt_text(question: str, prompts: PromptConfig, template: str | None = None) -> str:
    name = template or prompts.default_template
    if name not in prompts.templates:
        raise InputError(f"unknown prompt template '{name}'; the package has {sorted(prompts.templates)}")
    if prompts.image_token in question:
        raise InputError(f"the question must not contain '{prompts.image_token}': the prompt holds the one image")
    return prompts.system + prompts.templates[name].format(question=question)


def build_prompt(question: str, tokenizer: Tokenizer, prompts: PromptConfig, *,
                 template: str | None = None) -> PromptIds:
    ids = np.asarray(tokenizer.encode(prompt_text(question, prompts, template), add_bos=True), np.int64)
    (pos,) = np.nonzero(ids == tokenizer.image_token_id)
    if len(pos) != 1:
        raise InputError(f"prompt must hold exactly one '{prompts.image_token}' token, found {len(pos)}")
    return PromptIds(ids, int(pos[0]))


ASSISTANT_TURN = "assistant\n"


def cut_answer(text: str, prompts: PromptConfig) -> str:
    """The reference's `text.split('assistant\\n')[-1].strip().split('[U')[0]`: what follows the last
    assistant turn, stripped, up to the stop string (the model ends its turn with `[UNUSED_TOKEN_145]`)."""
    return text.split(ASSISTANT_TURN)[-1].strip().split(prompts.answer_stop)[0]
