"""Peak memory of the decoder, in a process that never imports torch (bench.backbone runs it as a child).

    python -m moai_edge.bench.speed.backbone_memory --engine DIR [--device cpu] [--threads 2] [--prompt-tokens 600]
                                              [--new-tokens 16]

Prints one JSON object: the process's peak RSS after its imports (`base_mb`), after prefill + decode ran
over a `--prompt-tokens` prompt and `--new-tokens` steps (every decoder weight page touched;
`prefill_decode_peak_mb`, with `kv_cache_mb`), and after the whole pipeline answered once
(`full_model_peak_mb`). Peaks are VmHWM: ru_maxrss would carry the parent's over exec.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from moai_edge.engines.errors import InputError
from moai_edge.engines.manifest import Manifest, load_manifest
from moai_edge.engines.options import DEVICES, RuntimeOptions
from moai_edge.engines.protocol import Engine
from moai_edge.engines.registry import open_engine
from moai_edge.runtime import Pipeline, sample_image
from moai_edge.runtime.decoding import DecoderRunner


def peak_mb() -> float:
    """This process's peak RSS (VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise OSError("no VmHWM in /proc/self/status")


def zero_prefill_feeds(engine: Engine, seq: int, rows: int = 1) -> dict[str, np.ndarray]:
    """A `rows` x `seq`-token prompt for the prefill graph, shaped and typed from its input specs: all positions
    real, nothing at image positions, every family input zero (whatever the family calls it)."""
    sizes = {"batch": rows, "seq": seq}
    feeds = {}
    for spec in engine.inputs():
        unknown = [a for a in spec.shape if isinstance(a, str) and a not in sizes]
        if unknown:
            raise InputError(f"prefill input '{spec.name}': expected symbolic axes among {sorted(sizes)}, "
                             f"found {unknown} in {list(spec.shape)}")
        feeds[spec.name] = np.zeros([sizes.get(a, a) for a in spec.shape], spec.dtype)
    feeds["attention_mask"][:] = 1
    feeds["position_ids"][:] = np.arange(seq)
    return feeds


def decoder_peak(manifest: Manifest, options: RuntimeOptions, seq: int, new_tokens: int) -> dict:
    """Prefill and decode alone (their shared weights opened once), run over `seq` prompt tokens."""
    prefill, decode = (open_engine(manifest, name, options) for name in ("prefill", "decode"))
    try:
        runner = DecoderRunner(prefill=prefill, decode=decode, embed_table=manifest.load_array("embedding", mmap=True),
                               dims=manifest.model)
        runner.prefill(zero_prefill_feeds(prefill, seq), max_new_tokens=new_tokens)
        for _ in range(new_tokens):
            runner.step(np.array([5]))
        return {"prefill_decode_peak_mb": peak_mb(), "kv_cache_mb": runner.cache.nbytes() / 2**20}
    finally:
        prefill.close()
        decode.close()


def measure_memory(engine_dir: Path, options: RuntimeOptions, *, prompt_tokens: int, new_tokens: int) -> dict:
    options = options.replace(verify_hashes=False)
    base = peak_mb()
    report = {"base_mb": base, **decoder_peak(load_manifest(engine_dir, verify_hashes=False), options, prompt_tokens,
                                              new_tokens)}
    with Pipeline.load(engine_dir, options) as pipe:
        pipe.ask(sample_image(), "Describe this image in detail.", max_new_tokens=8)
    report["full_model_peak_mb"] = peak_mb()
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", required=True, help="engine package folder")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="where the engines run (default: cpu)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads per engine; 0: the backend's default")
    p.add_argument("--prompt-tokens", type=int, default=600, help="prompt length of the prefill run (default: 600)")
    p.add_argument("--new-tokens", type=int, default=16, help="decode steps after it (default: 16)")
    args = p.parse_args(argv)
    options = RuntimeOptions(device=args.device, threads=args.threads)
    print(json.dumps(measure_memory(Path(args.engine), options, prompt_tokens=args.prompt_tokens,
                                    new_tokens=args.new_tokens)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
