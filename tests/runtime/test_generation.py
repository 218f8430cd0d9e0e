"""The generation loop against transformers' generate, and the numpy runtime against its PyTorch twin."""

from __future__ import annotations

import numpy as np
import pytest

from moai_edge.engines.errors import InputError
from moai_edge.runtime.generation import DecodingConfig, generate, warp

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from moai_edge.export import reference_generate as ref  # noqa: E402

PROMPTS = [[1, 5, 9, 14, 3], [1, 40, 41], [1, 7, 7, 7, 8, 90, 33]]


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(6.0)  # peaked but not one-hot distributions
    return model


class Harness:
    """Recomputes the logits from the full sequences each step; select_rows just indexes them."""

    def __init__(self, model, prompt: list[int], *, numpy: bool):
        self.model, self.numpy = model, numpy
        self.seqs = torch.tensor([prompt])

    @torch.no_grad()
    def logits(self):
        out = self.model(self.seqs).logits[:, -1].float()
        return out.numpy() if self.numpy else out

    def step(self, tokens):
        self.seqs = torch.cat([self.seqs, torch.as_tensor(np.asarray(tokens))[:, None]], dim=1)
        return self.logits()

    def select_rows(self, index):
        self.seqs = self.seqs[torch.as_tensor(np.asarray(index))]


def run_ours(model, prompt, cfg: DecodingConfig):
    h = Harness(model, prompt, numpy=True)
    return generate(h.logits(), h.step, h.select_rows, cfg)[0]


def run_reference(model, prompt, cfg: DecodingConfig):
    h = Harness(model, prompt, numpy=False)
    return ref.generate(h.logits(), h.step, h.select_rows, cfg)[0]


@torch.no_grad()
def run_hf(model, prompt, cfg: DecodingConfig):
    kw = dict(max_new_tokens=cfg.max_new_tokens, eos_token_id=list(cfg.eos_token_ids), pad_token_id=cfg.pad_token_id,
              do_sample=False, top_k=None, top_p=None, temperature=None)
    if cfg.strategy == "beam":
        kw.update(num_beams=cfg.num_beams, early_stopping=False, length_penalty=cfg.length_penalty, num_return_sequences=1)
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long), **kw)
    new = out[0, len(prompt):].tolist()
    for i, t in enumerate(new):
        if t in cfg.eos_token_ids:
            return new[: i + 1]
    return new


@pytest.fixture(scope="module")
def eos_cases(llama):
    """For each prompt an eos id that greedy decoding reaches at its 4th token, so stopping is exercised."""
    return [run_ours(llama, p, DecodingConfig(max_new_tokens=4, eos_token_ids=(96,)))[3] for p in PROMPTS]


@pytest.mark.parametrize("i", range(len(PROMPTS)))
def test_greedy_equals_transformers(llama, eos_cases, i):
    for eos in ((96,), (eos_cases[i],)):
        cfg = DecodingConfig(strategy="greedy", max_new_tokens=12, eos_token_ids=eos)
        hf = run_hf(llama, PROMPTS[i], cfg)
        assert run_reference(llama, PROMPTS[i], cfg) == hf
        assert run_ours(llama, PROMPTS[i], cfg) == hf
    assert len(hf) <= 4 and hf[-1] == eos_cases[i]  # stopped on eos, eos included


@pytest.mark.parametrize("i", range(len(PROMPTS)))
@pytest.mark.parametrize("max_new, penalty", [(5, 1.0), (12, 1.0), (12, 0.5)])
def test_beam_equals_transformers(llama, eos_cases, i, max_new, penalty):
    for eos in ((96,), (eos_cases[i],)):
        cfg = DecodingConfig(strategy="beam", num_beams=3, max_new_tokens=max_new, length_penalty=penalty, eos_token_ids=eos)
        hf = run_hf(llama, PROMPTS[i], cfg)
        assert run_reference(llama, PROMPTS[i], cfg) == hf, (eos, hf)
        assert run_ours(llama, PROMPTS[i], cfg) == hf, (eos, hf)


def test_sampling_is_reproducible_and_inside_the_nucleus(llama):
    cfg = DecodingConfig(strategy="sample", max_new_tokens=10, temperature=0.9, top_p=0.8, top_k=20, seed=7, eos_token_ids=(96,))
    runs = [[run_ours(llama, p, cfg) for p in PROMPTS] for _ in range(2)]
    assert runs[0] == runs[1]
    other = [run_ours(llama, p, DecodingConfig(**{**cfg.__dict__, "seed": 8})) for p in PROMPTS]
    assert other != runs[0]
    torch_runs = []
    for _ in range(2):
        h = Harness(llama, PROMPTS[0], numpy=False)
        torch_runs.append(ref.generate(h.logits(), h.step, h.select_rows, cfg)[0])
    assert torch_runs[0] == torch_runs[1]
    # every sampled token had non-zero probability after HF's warpers
    h = Harness(llama, PROMPTS[1], numpy=True)
    logits = h.logits()
    for tok in runs[0][1]:
        assert np.isfinite(warp(logits, cfg)[0, tok])
        logits = h.step(np.array([tok]))
    # numpy's warper equals transformers' processors
    from transformers.generation.logits_process import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    x = torch.randn(4, 97) * 3
    procs = LogitsProcessorList([TemperatureLogitsWarper(0.9), TopKLogitsWarper(20), TopPLogitsWarper(0.8)])
    np.testing.assert_array_equal(np.isfinite(warp(x.numpy(), cfg)), torch.isfinite(procs(None, x.clone())).numpy())


def test_top_k_one_sampling_is_greedy(llama):
    for p in PROMPTS:
        greedy = run_ours(llama, p, DecodingConfig(max_new_tokens=8, eos_token_ids=(96,)))
        assert run_ours(llama, p, DecodingConfig(strategy="sample", top_k=1, max_new_tokens=8, seed=3, eos_token_ids=(96,))) == greedy


class TableModel:
    """A fake decoder whose logits depend on (input row, step): rows finish at different steps."""

    def __init__(self, rows: int, vocab: int = 11, eos_at: dict[int, int] | None = None):
        rng = np.random.default_rng(0)
        self.table = rng.standard_normal((rows, 20, vocab)).astype(np.float32)
        self.table[:, :, 2] = -50.0  # eos only where asked
        for row, t in (eos_at or {}).items():
            self.table[row, t, 2] = 50.0
        self.rows, self.t, self.seen = np.arange(rows), 0, []

    def first(self):
        return self.table[self.rows, 0]

    def step(self, tokens):
        self.t += 1
        self.seen.append(len(tokens))
        return self.table[self.rows, self.t]

    def select_rows(self, index):
        self.rows = self.rows[index]


def test_finished_rows_leave_the_batch_and_results_match_batch_one():
    eos_at = {1: 2}
    batch = TableModel(3, eos_at=eos_at)
    calls = []
    cfg = DecodingConfig(max_new_tokens=6, eos_token_ids=(2,))
    out = generate(batch.first(), batch.step, batch.select_rows, cfg, on_token=lambda r, t: calls.append((r, t)))
    assert out[1][-1] == 2 and len(out[1]) == 3
    assert batch.seen[-1] < 3 and batch.seen[0] == 3  # row 1 stopped costing decode work
    for r in range(3):
        alone = TableModel(3, eos_at=eos_at)
        alone.rows = alone.rows[[r]]
        assert generate(alone.first(), alone.step, alone.select_rows, cfg) == [out[r]]
        assert [t for row, t in calls if row == r] == out[r]


def test_one_token_is_the_argmax():
    logits = np.random.default_rng(1).standard_normal((2, 50)).astype(np.float32)
    out = generate(logits, lambda t: pytest.fail("no step needed"), lambda i: None, DecodingConfig(max_new_tokens=1))
    assert out == [[int(logits[0].argmax())], [int(logits[1].argmax())]]


@pytest.mark.parametrize("bad, words", [
    (dict(strategy="nucleus"), "strategy"), (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(strategy="sample", temperature=0.0), "temperature"), (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"), (dict(num_beams=0), "num_beams"),
])
def test_bad_configs_are_refused(bad, words):
    with pytest.raises(InputError, match=words):
        DecodingConfig(**bad).validate()
