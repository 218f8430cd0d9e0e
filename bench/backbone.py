"""Backbone latency and memory: the runtime against the PyTorch reference on the same package.

    python -m moai_edge.bench.backbone --engine DIR [--threads 2] [--runs 5] [--new-tokens 16]

Vision, prefill (time to first token, image tokens + prompt) and decode ms/token, each the median of
`--runs` after one warm-up, runtime and reference interleaved (A B A B) in one process so machine
noise hits both. Memory is measured in a separate process that never imports torch: peak RSS after
loading prefill + decode (and after one answer) against the size of the weights on disk.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from moai_edge.engines.manifest import Manifest

from .timing import timed_ms

MEMORY_PROBE = """
import json, sys
import numpy as np
from moai_edge.engines.manifest import Manifest
from moai_edge.engines.ort_engine import OrtEngine, OrtOptions
from moai_edge.engines.shared_weights import SharedWeights
from moai_edge.runtime.decoder import DecoderRunner
from moai_edge.runtime.model import Model, RuntimeOptions
from moai_edge.runtime.samples import sample_image
def peak_mb():  # VmHWM: this process's peak RSS (ru_maxrss would carry the parent's over exec)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
root, threads, seq, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
m = Manifest.load(root, verify=False)
d = m.model
base = peak_mb()
shared = SharedWeights.open(m.root, m.shared_weights["decoder"])
opts = OrtOptions(intra_op_threads=threads)
prefill, decode = (OrtEngine.load(m.path(m.component(n).file), options=opts, shared=shared) for n in ("prefill", "decode"))
feeds = {"inputs_embeds": np.zeros((1, seq, d.hidden_size), np.float32), "attention_mask": np.ones((1, seq), np.int64),
         "position_ids": np.arange(seq)[None], "im_mask": np.zeros((1, seq), bool)}
if m.family == "moai":
    feeds["aux_tokens"] = np.zeros((1, d.num_aux_tokens, d.hidden_size), np.float32)
else:
    feeds["seg_features"] = np.zeros((1, seq, d.hidden_size), np.float32)
runner = DecoderRunner(prefill=prefill, decode=decode, embed_table=np.load(m.path(m.component("embedding").file), mmap_mode="r"), dims=d)
runner.prefill(feeds, max_new_tokens=new)
for _ in range(new):
    runner.step(np.array([5]))
decoder_peak, kv_mb = peak_mb(), runner.cache.nbytes() / 2**20
del runner, prefill, decode, shared
model = Model.load(root, options=RuntimeOptions(threads=threads, verify_hashes=False))
model.ask(sample_image(), "Describe this image in detail.", max_new_tokens=8)
print(json.dumps({"base_mb": base, "prefill_decode_peak_mb": decoder_peak, "kv_cache_mb": kv_mb,
                  "full_model_peak_mb": peak_mb()}))
"""


def decoder_weight_bytes(m: Manifest) -> int:
    """Bytes of the prefill + decode weights: the shared file plus what stays inside the two graphs."""
    return sum((m.path(m.component(n).file)).stat().st_size for n in ("prefill", "decode")) + m.path(m.shared_weights["decoder"].file).stat().st_size


def measure_memory(engine_dir: Path, threads: int, seq: int, new_tokens: int) -> dict:
    """Peak RSS of prefill + decode run once over `seq` prompt tokens (every weight page touched)."""
    args = [str(engine_dir), str(threads), str(seq), str(new_tokens)]
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def measure_latency(engine_dir: Path, *, threads: int, runs: int, new_tokens: int) -> dict:
    import torch

    from moai_edge.export.checkpoint import load_checkpoint
    from moai_edge.bench.reference_pipeline import ReferencePipeline, reference_pixels
    from moai_edge.export.reference_prompt import build_reference_inputs
    from moai_edge.export.config import REFERENCE_PROMPTS
    from moai_edge.runtime.decoder import DecoderRunner
    from moai_edge.runtime.images import preprocess_batch
    from moai_edge.runtime.inputs import assemble_prefill
    from moai_edge.runtime.model import AuxInputs, Model, RuntimeOptions, Timer
    from moai_edge.runtime.samples import sample_image

    torch.set_num_threads(threads)
    manifest = Manifest.load(engine_dir, verify=False)
    model = Model.load(engine_dir, options=RuntimeOptions(threads=threads, verify_hashes=False))
    ref_model, root = load_checkpoint(manifest.source["checkpoint"], family=manifest.family,
                                     vision_config=manifest.source.get("vision_config"))
    ref = ReferencePipeline(ref_model, root / "tokenizer.model")
    image, question = sample_image(), "Describe this image in detail."
    pixels = preprocess_batch([image], manifest.preprocess)[0]
    t_pixels = reference_pixels(image, manifest.model.image_size)
    request = model.prepare(model.encode_images([image]), [question], [AuxInputs()], None, Timer())
    feeds = assemble_prefill(request, model.embed_table, max_context=model.dims.max_context)
    extra_key = "aux_tokens" if manifest.family == "moai" else "seg_features"

    def ours_vision():
        model.engines["vision"].run({"pixel_values": pixels})

    def ours_prefill():
        runner = DecoderRunner(prefill=model.engines["prefill"], decode=model.engines["decode"], embed_table=model.embed_table, dims=model.dims)
        runner.prefill(feeds, max_new_tokens=new_tokens)
        return runner

    def ours_decode():
        runner = ours_prefill()
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            runner.step(np.array([5], np.int64))
        return (time.perf_counter() - t0) * 1e3 / new_tokens

    with torch.no_grad():
        feats = ref_model.encode_image(t_pixels)
        inputs = build_reference_inputs(question, ref.tokenizer, ref_model.embed, feats, prompts=REFERENCE_PROMPTS)
        extra = {extra_key: torch.from_numpy(feeds[extra_key])}

    @torch.no_grad()
    def ref_vision():
        ref_model.encode_image(t_pixels)

    @torch.no_grad()
    def ref_prefill():
        return ref_model.prefill(inputs.embeds, inputs.attention_mask, inputs.position_ids, inputs.im_mask, **extra)[1]

    @torch.no_grad()
    def ref_decode():
        kv, mask = ref_prefill(), inputs.attention_mask
        pos = mask.sum(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            _, new = ref_model.decode_step(ref_model.embed(torch.tensor([5]))[:, None], mask, pos, kv)
            kv = [(torch.cat([k, nk], 2), torch.cat([v, nv], 2)) for (k, v), (nk, nv) in zip(kv, new)]
            pos = pos + 1
        return (time.perf_counter() - t0) * 1e3 / new_tokens

    stages = {"vision": (ours_vision, ref_vision), "prefill": (ours_prefill, ref_prefill), "decode_per_token": (ours_decode, ref_decode)}
    results = {}
    for stage, (ours, theirs) in stages.items():
        a, b = [], []
        for i in range(runs + 1):  # the first pair is the warm-up
            ta = ours() if stage == "decode_per_token" else timed_ms(ours)
            tb = theirs() if stage == "decode_per_token" else timed_ms(theirs)
            if i:
                a.append(ta)
                b.append(tb)
        results[stage] = {"runtime_ms": statistics.median(a), "reference_ms": statistics.median(b),
                          "speedup": statistics.median(y / x for x, y in zip(a, b))}
    results["prompt_tokens"] = int(feeds["attention_mask"].sum())
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=16)
    args = p.parse_args(argv)
    engine = Path(args.engine)
    latency = measure_latency(engine, threads=args.threads, runs=args.runs, new_tokens=args.new_tokens)
    report = {"latency": latency,
              "memory": measure_memory(engine, args.threads, latency["prompt_tokens"], args.new_tokens),
              "decoder_weights_mb": decoder_weight_bytes(Manifest.load(engine, verify=False)) / 2**20}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
