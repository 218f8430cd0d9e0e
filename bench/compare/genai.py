"""Our decode against onnxruntime-genai's on the same weights (`moai-edge bench --compare genai`, extra `compare`).

The decode path is a plain InternLM2 (the base weights, no branch), which is a Llama with `wqkv` split into
q, k and v per KV group (REFERENCE.md section 1). The package's source checkpoint is converted to a Hugging
Face Llama folder, onnxruntime-genai's model builder turns it into its decoder at each precision, and our
package at the same precision (lowered on the spot from a float32 package) decodes beside it: the same
past length, the same batch, interleaved (ours, genai, ours, genai, ...), each side's median ms per token
after its own prefill of that many random tokens. Only the decode step is compared: genai has no image
prefill.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moai_edge.engines.errors import InputError, MoaiEdgeError, require
from moai_edge.engines.manifest import Manifest, load_manifest
from moai_edge.engines.options import RuntimeOptions
from moai_edge.engines.registry import open_engine
from moai_edge.runtime.decoding import DecoderRunner

from ..speed.backbone_memory import zero_prefill_feeds
from ..speed.roofline import batching, read_bandwidth_gbs

PRECISIONS = ("fp32", "int4")


@dataclass(frozen=True)
class CompareConfig:
    engine_dir: Path
    batch_sizes: tuple[int, ...] = (1, 8)
    precisions: tuple[str, ...] = PRECISIONS
    past: int = 1316  # the reference's prompt length (or the package's context less `steps`, if shorter)
    steps: int = 16
    rounds: int = 3
    options: RuntimeOptions = RuntimeOptions()


def to_llama(checkpoint: Path, out: Path) -> Path:
    """The checkpoint's decoder base weights (and output head, embedding, tokenizer) as a Hugging Face Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    from moai_edge.export.checkpoint import load_checkpoint

    model, root = load_checkpoint(checkpoint)
    d = model.cfg.decoder
    cfg = LlamaConfig(vocab_size=d.vocab_size, hidden_size=d.hidden_size, intermediate_size=d.intermediate_size,
                      num_hidden_layers=d.num_layers, num_attention_heads=d.num_heads,
                      num_key_value_heads=d.num_kv_heads, head_dim=d.head_dim, rms_norm_eps=d.rms_norm_eps,
                      rope_theta=d.rope_theta, max_position_embeddings=model.cfg.max_context,
                      tie_word_embeddings=False, bos_token_id=d.bos_id, eos_token_id=d.eos_id, pad_token_id=d.pad_id)
    groups = d.num_heads // d.num_kv_heads
    state = {"model.embed_tokens.weight": model.model.tok_embeddings.weight[:d.vocab_size],
             "model.norm.weight": model.model.norm.weight, "lm_head.weight": model.output.weight}
    for i, layer in enumerate(model.model.layers):
        p = f"model.layers.{i}."
        qkv = layer.attention.wqkv.Plora_main.weight.view(d.num_kv_heads, groups + 2, d.head_dim, d.hidden_size)
        state.update({
            p + "self_attn.q_proj.weight": qkv[:, :groups].reshape(-1, d.hidden_size),
            p + "self_attn.k_proj.weight": qkv[:, groups].reshape(-1, d.hidden_size),
            p + "self_attn.v_proj.weight": qkv[:, groups + 1].reshape(-1, d.hidden_size),
            p + "self_attn.o_proj.weight": layer.attention.wo.Plora_main.weight,
            p + "mlp.gate_proj.weight": layer.feed_forward.w1.Plora_main.weight,
            p + "mlp.up_proj.weight": layer.feed_forward.w3.Plora_main.weight,
            p + "mlp.down_proj.weight": layer.feed_forward.w2.Plora_main.weight,
            p + "input_layernorm.weight": layer.attention_norm.weight,
            p + "post_attention_layernorm.weight": layer.ffn_norm.weight,
        })
    llama = LlamaForCausalLM(cfg)
    missing, unexpected = llama.load_state_dict(state, strict=False)
    if [k for k in missing if "rotary" not in k] or unexpected:
        raise MoaiEdgeError(f"Llama conversion: missing {missing}, unexpected {unexpected}")
    llama.save_pretrained(out)
    LlamaTokenizer(vocab_file=str(Path(root) / "tokenizer.model")).save_pretrained(out)
    return out


def build_genai(llama: Path, out: Path, precision: str) -> Path:
    """onnxruntime-genai's model builder on the Llama folder, for the CPU."""
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(llama), "-o", str(out), "-p", precision,
           "-e", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise MoaiEdgeError(f"onnxruntime-genai's builder failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return out


class OurDecode:
    """Our package's prefill and decode, through the runtime's DecoderRunner."""

    def __init__(self, engine_dir: Path, options: RuntimeOptions):
        self.manifest = m = load_manifest(engine_dir)
        self.prefill_engine, self.decode_engine = open_engine(m, "prefill", options), open_engine(m, "decode", options)
        self.table = m.load_array("embedding", mmap=True)

    def ms_per_token(self, ids: np.ndarray, steps: int) -> float:
        rows, length = ids.shape
        runner = DecoderRunner(prefill=self.prefill_engine, decode=self.decode_engine, embed_table=self.table,
                               dims=self.manifest.model)
        feeds = zero_prefill_feeds(self.prefill_engine, length, rows)  # no image, no family input
        feeds["inputs_embeds"][:] = self.table[ids]
        runner.prefill(feeds, max_new_tokens=steps)
        token = np.full(rows, ids[0, -1])
        start = time.perf_counter()
        for _ in range(steps):
            runner.step(token)
        return (time.perf_counter() - start) / steps * 1e3

    def close(self) -> None:
        self.prefill_engine.close()
        self.decode_engine.close()


class GenaiDecode:
    def __init__(self, folder: Path):
        import onnxruntime_genai as og

        self.og, self.model = og, og.Model(str(folder))

    def ms_per_token(self, ids: np.ndarray, steps: int) -> float:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=ids.shape[1] + steps, batch_size=ids.shape[0])
        generator = self.og.Generator(self.model, params)
        generator.append_tokens(ids.astype(np.int32))
        start = time.perf_counter()
        for _ in range(steps):
            generator.generate_next_token()
        return (time.perf_counter() - start) / steps * 1e3


def compare_genai(cfg: CompareConfig) -> list[dict]:
    """One row per precision and batch: our and genai's decode tokens/s and their ratio."""
    require("onnxruntime_genai", "compare")
    require("torch", "export")
    from moai_edge.export.precision import PRECISION_PRESETS
    from moai_edge.export.reduce_package import reduce_package

    manifest = load_manifest(cfg.engine_dir)
    if manifest.source.get("precision", "fp32") != "fp32":
        raise InputError(f"--compare genai: expected a float32 package (it is lowered to each precision here), found "
                         f"'{manifest.source['precision']}'")
    checkpoint = manifest.source.get("checkpoint")
    if not checkpoint or not Path(checkpoint).is_dir():
        raise InputError(f"--compare genai: the package's source checkpoint {checkpoint!r} is not a folder here")
    past = min(cfg.past, manifest.model.max_context - cfg.steps)  # a tiny package's context is shorter
    rows = []
    draws = np.random.default_rng(0)
    bandwidth = read_bandwidth_gbs(threads=cfg.options.threads)
    with tempfile.TemporaryDirectory(prefix="moai-edge-genai-") as work:
        llama = to_llama(Path(checkpoint), Path(work) / "llama")
        for precision in cfg.precisions:
            ours_dir = cfg.engine_dir if precision == "fp32" else reduce_package(
                cfg.engine_dir, Path(work) / f"ours-{precision}", PRECISION_PRESETS[precision]).root
            theirs = GenaiDecode(build_genai(llama, Path(work) / f"genai-{precision}", precision))
            ours = OurDecode(ours_dir, cfg.options)
            try:
                for batch in cfg.batch_sizes:
                    times: dict[str, list[float]] = {"ours": [], "genai": []}
                    for _ in range(cfg.rounds):
                        ids = draws.integers(3, manifest.model.vocab_size, (batch, past))
                        times["ours"].append(ours.ms_per_token(ids, cfg.steps))
                        times["genai"].append(theirs.ms_per_token(ids, cfg.steps))
                    ms = {k: statistics.median(v) for k, v in times.items()}
                    rows.append({"precision": precision, "batch": batch, "past": past,
                                 "ours_ms_per_step": ms["ours"], "genai_ms_per_step": ms["genai"],
                                 "ours_tokens_per_s": batch * 1e3 / ms["ours"],
                                 "genai_tokens_per_s": batch * 1e3 / ms["genai"],
                                 "ratio": ms["genai"] / ms["ours"]})
                add_batch_gains([r for r in rows if r["precision"] == precision], ours.manifest,
                                context=past + cfg.steps // 2, bandwidth_gbs=bandwidth)
            finally:
                ours.close()
    return rows


def add_batch_gains(rows: list[dict], manifest: Manifest, *, context: int, bandwidth_gbs: float) -> None:
    """Onto one precision's rows above batch 1: each side's tokens/s over its batch 1, and the most ours could
    gain (bench.roofline.batching)."""
    one = {r["batch"]: r for r in rows}.get(1)
    if one is None:
        return
    gains = batching(manifest, tokens_per_s={r["batch"]: r["ours_tokens_per_s"] for r in rows}, context=context,
                     bandwidth_gbs=bandwidth_gbs)
    for r in rows:
        if r["batch"] > 1:
            g = gains[str(r["batch"])]
            r.update(ours_gain=g["gain"], gain_ceiling=g["gain_ceiling"],
                     genai_gain=r["genai_tokens_per_s"] / one["genai_tokens_per_s"])


def markdown(rows: list[dict]) -> str:
    def gains(r: dict) -> str:
        if "ours_gain" not in r:
            return " | | |"
        return f" | {r['ours_gain']:.2f}x | {r['genai_gain']:.2f}x | {r['gain_ceiling']:.2f}x |"

    lines = ["Decode against onnxruntime-genai on the same weights (interleaved, median). Gain: tokens/s over the "
             "same side's batch 1; ceiling: the most ours could gain, reading the weights once and each row's KV "
             "cache per step at this machine's read bandwidth", "",
             "| precision | batch | past | ours tokens/s | genai tokens/s | ours / genai | ours gain | genai gain | "
             "ceiling |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['precision']} | {r['batch']} | {r['past']} | {r['ours_tokens_per_s']:.1f} | "
              f"{r['genai_tokens_per_s']:.1f} | {r['ratio']:.2f}x" + gains(r) for r in rows]
    return "\n".join(lines)
