"""The public surface: Request in, Result out, one token callback shape that can stop a row."""

from __future__ import annotations

import json

import pytest

from moai_edge.runtime import DecodingConfig, Pipeline, Request, RuntimeOptions
from moai_edge.runtime.samples import sample_image

QUESTION = "What is in the image?"


@pytest.fixture(scope="module")
def pipe(tiny_packages):
    with Pipeline.load(tiny_packages["moai"], RuntimeOptions(threads=1)) as p:
        yield p


def test_the_public_api_imports_from_the_package():
    from moai_edge.runtime import LatestFrameRunner  # noqa: F401 - the README's names are all importable here

    assert DecodingConfig().strategy == "greedy"


def test_results_are_keyed_by_the_request_id_and_serializable(pipe):
    cfg = pipe.decoding("greedy", max_new_tokens=4)
    results = pipe.run([Request(sample_image(size=80, seed=s), QUESTION, cfg, id=f"cam-{s}") for s in range(2)])
    assert [r.id for r in results] == ["cam-0", "cam-1"]
    back = json.loads(json.dumps(results[0].to_json()))
    assert back["tokens"] == results[0].tokens and back["answer"] == results[0].answer and "experts" in back


def test_the_token_callback_stops_one_row_midway(pipe):
    """A closed socket or a newer camera frame cuts a decode short: returning False stops that row only."""
    cfg = DecodingConfig(strategy="greedy", max_new_tokens=12, eos_token_ids=())  # no eos: rows run to the limit
    images = [sample_image(size=80, seed=s) for s in range(2)]
    full = pipe.ask_batch(images, [QUESTION] * 2, decoding=cfg)
    heard = {0: [], 1: []}

    def on_token(row: int, token: int) -> bool:
        heard[row].append(token)
        return not (row == 0 and len(heard[0]) == 3)

    cut = pipe.ask_batch(images, [QUESTION] * 2, decoding=cfg, on_token=on_token)
    assert cut[0].tokens == full[0].tokens[:3] == heard[0]
    assert cut[1].tokens == full[1].tokens == heard[1] and len(cut[1].tokens) == 12


def test_requests_with_different_decoding_in_one_call(pipe):
    img = sample_image(size=80, seed=7)
    short, long_ = pipe.decoding("greedy", max_new_tokens=2), pipe.decoding("greedy", max_new_tokens=5)
    a, b = pipe.run([Request(img, QUESTION, long_), Request(img, QUESTION, short)])
    assert b.tokens == a.tokens[:len(b.tokens)] and len(b.tokens) <= 2
