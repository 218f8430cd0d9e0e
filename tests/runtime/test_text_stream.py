"""The streamed pieces of an answer add up to the Result's answer: text that could start the stop string waits."""

from __future__ import annotations

import pytest

from moai_edge.engines.manifest import load_manifest
from moai_edge.runtime.decoding.prompts import cut_answer
from moai_edge.runtime.decoding.text_stream import TextStream
from moai_edge.runtime.decoding.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer_and_prompts(tiny_packages):
    m = load_manifest(tiny_packages["moai"])
    tok = Tokenizer.from_bytes(m.read_file(m.tokenizer["file"]), image_token=m.prompts.image_token)
    return tok, m.prompts


@pytest.mark.parametrize("text", ["a red car on the road", "  two cats [UNUSED_TOKEN_145] and more text",
                                  "ends with a bracket [", "[UNUSED_TOKEN_145]", "café ☕ naïve"])
def test_pieces_add_up_to_the_answer_and_never_show_the_stop_string(tokenizer_and_prompts, text):
    tok, prompts = tokenizer_and_prompts
    ids = tok.encode(text) + [tok.eos_id]
    stream = TextStream(tok, prompts)
    pieces = [stream.push(i) for i in ids]
    answer = cut_answer(tok.decode(ids), prompts)
    pieces.append(stream.finish(answer))
    assert "".join(pieces) == answer
    assert all(prompts.answer_stop not in "".join(pieces[:k]) for k in range(len(pieces)))
    assert "\ufffd" not in "".join(pieces) or "\ufffd" in answer
