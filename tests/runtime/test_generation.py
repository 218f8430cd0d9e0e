"""The generation loop: the PyTorch reference against transformers' generate, the numpy runtime against the
reference."""

from __future__ import annotations

import zlib
from dataclasses import asdict, replace

import numpy as np
import pytest

from moai_edge.engines.errors import InputError
from moai_edge.runtime.decoding.generation import DecodingConfig, generate

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from moai_edge.bench.reference import generate as ref  # noqa: E402
from transformers.generation.logits_process import (  # noqa: E402
    LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

PROMPTS = [[1, 5, 9, 14, 3], [1, 40, 41], [1, 7, 7, 7, 8, 90, 33]]
NO_EOS = (96,)  # an id the tiny model does not reach within these lengths (checked against HF anyway)


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = transformers.LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)  # peaked but not one-hot distributions
    return model


class Harness:
    """No KV cache: keeps each row's full sequence and recomputes the logits; select_rows indexes the sequences."""

    def __init__(self, model, prompt: list[int], *, numpy: bool):
        self.model, self.numpy = model, numpy
        self.seqs = torch.tensor([prompt])  # (R, T)
        self.given: list[torch.Tensor] = []  # every logits handed out, in order

    @torch.no_grad()
    def logits(self):
        out = self.model(self.seqs).logits[:, -1].float()  # (R, V)
        self.given.append(out)
        return out.numpy() if self.numpy else out

    def step(self, tokens):
        self.seqs = torch.cat([self.seqs, torch.as_tensor(np.asarray(tokens), dtype=torch.long)[:, None]], dim=1)
        return self.logits()

    def select_rows(self, index):
        self.seqs = self.seqs[torch.as_tensor(np.asarray(index), dtype=torch.long)]


def to_ref(cfg: DecodingConfig) -> ref.DecodingConfig:
    return ref.DecodingConfig(**asdict(cfg))


def run_runtime(model, prompt, cfg: DecodingConfig) -> list[int]:
    h = Harness(model, prompt, numpy=True)
    return generate(h.logits(), h.step, h.select_rows, cfg)[0]


def run_reference(model, prompt, cfg: DecodingConfig) -> list[int]:
    h = Harness(model, prompt, numpy=False)
    return ref.generate(h.logits(), h.step, h.select_rows, to_ref(cfg))[0]


def cut_after_eos(ids: list[int], eos: tuple[int, ...]) -> list[int]:
    for i, t in enumerate(ids):
        if t in eos:
            return ids[: i + 1]
    return ids


@torch.no_grad()
def run_hf(model, prompt, cfg: DecodingConfig) -> list[int]:
    beam = cfg.strategy == "beam"
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=cfg.max_new_tokens, eos_token_id=list(cfg.eos_token_ids),
                         pad_token_id=cfg.pad_token_id, do_sample=False, top_k=None, top_p=None, temperature=None,
                         num_beams=cfg.num_beams if beam else 1, early_stopping=False,
                         length_penalty=cfg.length_penalty, num_return_sequences=1)
    return cut_after_eos(out[0, len(prompt):].tolist(), cfg.eos_token_ids)  # pad == eos here


@pytest.fixture(scope="module")
def eos_ids(llama):
    """Per prompt, the token greedy decoding emits 4th: as eos it makes decoding stop early."""
    return [run_reference(llama, p, DecodingConfig(max_new_tokens=4, eos_token_ids=NO_EOS))[3] for p in PROMPTS]


# ---- against transformers ------------------------------------------------------------------
@pytest.mark.parametrize("i", range(len(PROMPTS)))
def test_greedy_equals_transformers(llama, eos_ids, i):
    for eos in (NO_EOS, (eos_ids[i],)):
        cfg = DecodingConfig(strategy="greedy", max_new_tokens=12, eos_token_ids=eos)
        hf = run_hf(llama, PROMPTS[i], cfg)
        assert run_reference(llama, PROMPTS[i], cfg) == hf
        assert run_runtime(llama, PROMPTS[i], cfg) == hf
    assert len(hf) <= 4 and hf[-1] == eos_ids[i]  # stopped early on eos, eos included


def test_beam_equals_transformers(llama, eos_ids):
    stopped_on_eos = 0
    for i, prompt in enumerate(PROMPTS):
        for max_new, penalty in ((5, 1.0), (12, 1.0), (12, 0.5)):
            for eos in (NO_EOS, (eos_ids[i],)):
                cfg = DecodingConfig(strategy="beam", num_beams=3, max_new_tokens=max_new, length_penalty=penalty,
                                     eos_token_ids=eos)
                hf = run_hf(llama, prompt, cfg)
                case = (i, max_new, penalty, eos, hf)
                assert run_reference(llama, prompt, cfg) == hf, case
                assert run_runtime(llama, prompt, cfg) == hf, case
                stopped_on_eos += hf[-1] in eos and len(hf) < max_new
    assert stopped_on_eos > 0


# ---- sampling ----------------------------------------------------------------------------------
SAMPLE = DecodingConfig(strategy="sample", max_new_tokens=10, temperature=0.9, top_p=0.8, top_k=20, seed=7,
                        eos_token_ids=NO_EOS)


def hf_warpers(cfg: DecodingConfig) -> LogitsProcessorList:
    return LogitsProcessorList([TemperatureLogitsWarper(cfg.temperature), TopKLogitsWarper(cfg.top_k),
                                TopPLogitsWarper(cfg.top_p)])


def sample_both(model, prompt,
                cfg: DecodingConfig) -> tuple[list[int], list[int], list[torch.Tensor], list[torch.Tensor]]:
    hn, ht = Harness(model, prompt, numpy=True), Harness(model, prompt, numpy=False)
    ours = generate(hn.logits(), hn.step, hn.select_rows, cfg)[0]
    theirs = ref.generate(ht.logits(), ht.step, ht.select_rows, to_ref(cfg))[0]
    return ours, theirs, hn.given, ht.given


def test_sampling_is_reproducible_and_seed_dependent(llama):
    first = [sample_both(llama, p, SAMPLE)[:2] for p in PROMPTS]
    assert first == [sample_both(llama, p, SAMPLE)[:2] for p in PROMPTS]
    other = [sample_both(llama, p, replace(SAMPLE, seed=8))[:2] for p in PROMPTS]
    assert [o[0] for o in other] != [f[0] for f in first]
    assert [o[1] for o in other] != [f[1] for f in first]


def test_sampled_tokens_are_inside_the_nucleus(llama):
    warpers = hf_warpers(SAMPLE)
    for prompt in PROMPTS:
        for seed in range(3):
            ours, theirs, given_n, given_t = sample_both(llama, prompt, replace(SAMPLE, seed=seed))
            for ids, given in ((ours, given_n), (theirs, given_t)):
                for tok, logits in zip(ids, given):
                    allowed = torch.isfinite(warpers(None, logits.clone()))[0]
                    assert allowed[tok], (prompt, seed, tok)


def test_runtime_warpers_equal_transformers():
    from moai_edge.runtime.decoding.generation import warp

    x = torch.randn(6, 97, generator=torch.Generator().manual_seed(0)) * 3
    for cfg in (SAMPLE, replace(SAMPLE, top_k=0, top_p=0.5), replace(SAMPLE, top_k=3, top_p=1.0, temperature=1.0)):
        procs = [TemperatureLogitsWarper(cfg.temperature)] + ([TopKLogitsWarper(cfg.top_k)] if cfg.top_k else []) + \
            ([TopPLogitsWarper(cfg.top_p)] if cfg.top_p < 1 else [])
        expected = LogitsProcessorList(procs)(None, x.clone())
        np.testing.assert_array_equal(np.isfinite(warp(x.numpy(), cfg)), torch.isfinite(expected).numpy())
        np.testing.assert_array_equal(torch.isfinite(ref.warp(x, to_ref(cfg))).numpy(),
                                      torch.isfinite(expected).numpy())


def test_top_k_one_sampling_is_greedy(llama):
    for p in PROMPTS:
        greedy = run_reference(llama, p, DecodingConfig(max_new_tokens=8, eos_token_ids=NO_EOS))
        top1 = DecodingConfig(strategy="sample", top_k=1, max_new_tokens=8, seed=3, eos_token_ids=NO_EOS)
        assert sample_both(llama, p, top1)[:2] == (greedy, greedy)


# ---- batching, callbacks, edge cases (fake decoder) ----------------------------------------
class HashModel:
    """A fake decoder: each cache row holds (input row, its tokens); the logits are a seeded hash of that history.
    Token 2 (eos) is impossible except for input row `eos_row` at position `eos_at`."""

    def __init__(self, rows: int, vocab: int = 13, eos_row: int = 1, eos_at: int = 2):
        self.vocab, self.eos_row, self.eos_at = vocab, eos_row, eos_at
        self.hist: list[tuple[int, tuple[int, ...]]] = [(r, ()) for r in range(rows)]
        self.seen: list[int] = []  # R of each step call

    def logits(self) -> np.ndarray:
        out = []
        for row, toks in self.hist:
            seed = zlib.crc32(np.asarray((row,) + toks, np.int64).tobytes())
            x = np.random.default_rng(seed).standard_normal(self.vocab).astype(np.float32) * 2
            x[2] = 50.0 if (row == self.eos_row and len(toks) == self.eos_at) else -50.0
            out.append(x)
        return np.stack(out)  # (R, V)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        self.seen.append(len(tokens))
        self.hist = [(row, toks + (int(t),)) for (row, toks), t in zip(self.hist, np.asarray(tokens))]
        return self.logits()

    def select_rows(self, index) -> None:
        self.hist = [self.hist[int(i)] for i in np.asarray(index)]

    def only(self, row: int) -> HashModel:
        self.hist = [self.hist[row]]
        return self


def test_batched_greedy_drops_finished_rows_and_matches_rows_alone():
    cfg = DecodingConfig(max_new_tokens=6, eos_token_ids=(2,))
    m = HashModel(3)
    calls: list[tuple[int, int]] = []
    out = generate(m.logits(), m.step, m.select_rows, cfg, on_token=lambda r, t: calls.append((r, t)))
    assert out[1] == out[1][:2] + [2] and all(len(out[r]) == 6 for r in (0, 2))
    assert m.seen == [3, 3, 2, 2, 2]  # row 1 stops costing decode work; max_new_tokens-1 steps
    assert sum(len(ids) for ids in out) == len(calls)
    for r in range(3):
        assert [t for row, t in calls if row == r] == out[r]  # once per token, in order
        alone = HashModel(3).only(r)
        assert generate(alone.logits(), alone.step, alone.select_rows, cfg) == [out[r]]


def test_no_step_when_every_row_is_done():
    m = HashModel(2, eos_row=0, eos_at=0)
    m.hist[1] = (0, ())  # both rows emit eos first
    out = generate(m.logits(), m.step, m.select_rows, DecodingConfig(max_new_tokens=5))
    assert out == [[2], [2]] and m.seen == []


@pytest.mark.parametrize("penalty", [1.0, 0.5, 2.0])
def test_batched_beam_runtime_equals_reference_and_rows_alone(penalty):
    cfg = DecodingConfig(strategy="beam", num_beams=3, max_new_tokens=7, length_penalty=penalty, eos_token_ids=(2,))
    m = HashModel(3)
    selections: list[np.ndarray] = []

    def select(index):
        selections.append(np.asarray(index))
        m.select_rows(index)

    calls: list[tuple[int, int]] = []
    out = generate(m.logits(), m.step, select, cfg, on_token=lambda r, t: calls.append((r, t)))
    np.testing.assert_array_equal(selections[0], np.repeat(np.arange(3), 3))  # the fork into beams
    assert set(m.seen) == {9}
    assert calls == [(r, t) for r, ids in enumerate(out) for t in ids]

    t = HashModel(3)
    torch_step = lambda tokens: torch.from_numpy(t.step(tokens.numpy()))  # noqa: E731
    assert ref.generate(torch.from_numpy(t.logits()), torch_step, t.select_rows, to_ref(cfg)) == out
    for r in range(3):
        alone = HashModel(3).only(r)
        assert generate(alone.logits(), alone.step, alone.select_rows, cfg) == [out[r]]


def test_one_new_token_is_the_argmax():
    logits = np.random.default_rng(1).standard_normal((2, 50)).astype(np.float32)

    def no_step(tokens):
        raise AssertionError("step must not be called")

    for strategy in ("greedy", "beam"):
        cfg = DecodingConfig(strategy=strategy, max_new_tokens=1)
        expected = [[int(logits[0].argmax())], [int(logits[1].argmax())]]
        assert generate(logits, no_step, lambda i: None, cfg) == expected
        assert ref.generate(torch.from_numpy(logits), no_step, lambda i: None, to_ref(cfg)) == expected


@pytest.mark.parametrize("bad, words", [
    (dict(strategy="nucleus"), "strategy"), (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(strategy="sample", temperature=0.0), "temperature"), (dict(top_p=1.5), "top_p"),
    (dict(top_p=0.0), "top_p"), (dict(top_k=-1), "top_k"), (dict(num_beams=0), "num_beams"),
])
def test_bad_configs_are_refused(bad, words):
    for cls in (DecodingConfig, ref.DecodingConfig):
        with pytest.raises(InputError, match=words):
            cls(**bad).validate()
    with pytest.raises(InputError, match="expected"):
        generate(np.zeros((2, 5), np.float32), None, None, DecodingConfig(**bad))


def test_bad_logits_are_refused():
    with pytest.raises(InputError, match="expected shape"):
        generate(np.zeros(5, np.float32), None, None, DecodingConfig())
    with pytest.raises(InputError, match=r"expected shape \(1, 5\)"):
        generate(np.zeros((1, 5), np.float32), lambda t: np.zeros((1, 6), np.float32), None,
                 DecodingConfig(max_new_tokens=3, eos_token_ids=(9,)))
