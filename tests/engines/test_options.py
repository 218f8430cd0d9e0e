"""RuntimeOptions and DecodingConfig: frozen, validated, and every refusal says what it expected and found."""

from __future__ import annotations

import dataclasses

import pytest

from moai_edge.engines import DecodingConfig, InputError, RuntimeOptions
from moai_edge.engines.options import usable_cores


@pytest.mark.parametrize("changes, words", [
    (dict(device="gpu"), ["device", "'cpu', 'cuda', 'tensorrt'", "'gpu'"]),
    (dict(backend=""), ["backend", "''"]), (dict(backend=3), ["backend", "3"]),
    (dict(threads=-1), ["threads", "from 0 to", "-1"]), (dict(threads=usable_cores() + 1), ["threads", "usable cores"]),
    (dict(threads=2.0), ["threads", "2.0"]), (dict(threads=True), ["threads", "True"]),
    (dict(expert_batch=0), ["expert_batch", ">= 1", "0"]), (dict(expert_batch="8"), ["expert_batch", "'8'"]),
    (dict(device_id=-1), ["device_id", "-1"]),
    (dict(concurrent=1), ["concurrent", "True or False", "1"]), (dict(memory_arena="no"), ["memory_arena", "'no'"]),
    (dict(verify_hashes=None), ["verify_hashes", "None"]), (dict(check_inputs=0), ["check_inputs", "0"]),
])
def test_bad_options_are_named(changes, words):
    for make in (lambda: RuntimeOptions(**changes), lambda: RuntimeOptions().replace(**changes)):
        with pytest.raises(InputError) as info:
            make()
        for w in words:
            assert w in str(info.value), (w, str(info.value))


def test_options_are_frozen_and_replace_validates():
    o = RuntimeOptions()
    assert (o.device, o.backend, o.threads, o.concurrent, o.expert_batch) == ("cpu", "onnxruntime", 0, True, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.threads = 2
    assert o.replace(threads=1, device="cuda") == RuntimeOptions(threads=1, device="cuda")
    with pytest.raises(InputError, match="unexpected \\['providers'\\]"):
        o.replace(providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("changes, words", [
    (dict(strategy="nucleus"), "strategy"), (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens="5"), "max_new_tokens: expected an integer, found '5'"),
    (dict(strategy="sample", temperature=0.0), "temperature"), (dict(top_p=1.5), "top_p"),
    (dict(top_p=float("nan")), "top_p"), (dict(top_k=-1), "top_k"), (dict(num_beams=0), "num_beams"),
    (dict(eos_token_ids=[-1]), "eos_token_ids"), (dict(eos_token_ids=5), "eos_token_ids"),
    (dict(seed="7"), "seed"), (dict(seed=-1), r"seed: expected an integer >= 0 .*found -1"),
    (dict(pad_token_id=None), "pad_token_id"), (dict(beams=2), "unexpected \\['beams'\\]"),
])
def test_bad_decoding_is_named(changes, words):
    with pytest.raises(InputError, match=words):
        DecodingConfig().replace(**changes)


def test_decoding_round_trips_through_json():
    cfg = DecodingConfig().replace(strategy="beam", eos_token_ids=[2, 7], seed=3)
    assert cfg.eos_token_ids == (2, 7) and hash(cfg)
    assert cfg.to_json()["eos_token_ids"] == [2, 7]
    assert DecodingConfig.from_json(cfg.to_json()) == cfg
    assert DecodingConfig.from_json({}) == DecodingConfig()
    assert DecodingConfig(eos_token_ids=()).replace(max_new_tokens=4).eos_token_ids == ()  # no end token: length only
    with pytest.raises(InputError, match="JSON object"):
        DecodingConfig.from_json([1])
