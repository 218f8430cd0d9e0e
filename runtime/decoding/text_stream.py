"""Token ids in, text pieces out, whose concatenation is the answer the Result will carry.

The answer is `cut_answer` of the decoded ids (the text up to the stop string), so a piece is sent only once it can
no longer change: text that could be the start of the stop string, or a half-decoded UTF-8 character, waits.
"""

from __future__ import annotations

from moai_edge.engines.manifest import PromptConfig

from .prompts import cut_answer
from .tokenizer import Tokenizer


class TextStream:
    def __init__(self, tokenizer: Tokenizer, prompts: PromptConfig):
        self.tokenizer, self.prompts = tokenizer, prompts
        self.ids: list[int] = []
        self.sent = ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = cut_answer(self.tokenizer.decode(self.ids), self.prompts)
        ready = text[:len(text) - self.undecided(text)]
        if len(ready) <= len(self.sent) or not ready.startswith(self.sent):
            return ""
        piece, self.sent = ready[len(self.sent):], ready
        return piece

    def undecided(self, text: str) -> int:
        """How many characters at the end of `text` may still change with the next token."""
        if text.endswith("\ufffd"):  # a character whose bytes have not all come: one mark per byte so far
            return len(text) - len(text.rstrip("\ufffd"))
        stop = self.prompts.answer_stop
        return next((n for n in range(min(len(stop) - 1, len(text)), 0, -1) if text.endswith(stop[:n])), 0)

    def finish(self, answer: str) -> str:
        """The rest of `answer` (the Result's), once decoding has ended."""
        return answer[len(self.sent):] if answer.startswith(self.sent) else ""
