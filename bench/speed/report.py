"""A benchmark report on disk: report.json (every figure), report.md (tables), PNG plots, and a terminal summary."""

from __future__ import annotations

import json
from pathlib import Path

from .footprint import GB
from .footprint import markdown as footprint_markdown
from ..compare.genai import markdown as genai_markdown

PLOTS = ("latency_by_stage.png", "throughput_by_batch.png", "memory_over_time.png")


def write_report(report: dict, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report["plots"] = write_plots(report, out_dir)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(markdown(report))
    return [out_dir / "report.json", out_dir / "report.md", *(out_dir / p for p in report["plots"].get("files", []))]


def fmt(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# moai-edge benchmark: {m['engine']}", "",
             f"{m['cpu']} ({m['arch']}), {m['logical_cores']} logical cores, {m['threads'] or 'default'} threads; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
             + f"; manifest sha256 {m['engine_manifest_sha256'][:12]}", "",
             f"{report['config']['runs']} runs after {report['config']['warmup']} warm-up, experts "
             f"{'concurrently' if report['config']['concurrent'] else 'one after another'}, "
             f"{report['config']['max_new_tokens']} new tokens per answer.", "", "## Latency by stage (ms)", ""]
    batches = report["batches"]
    for b, entry in batches.items():
        lines += [f"### batch {b}", "", "| stage | p50 | p90 | p99 | mean |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {s} | {fmt(v['p50'])} | {fmt(v['p90'])} | {fmt(v['p99'])} | {fmt(v['mean'])} |"
                  for s, v in entry["stages_ms"].items()]
        lines.append("")
    lines += ["## Throughput and memory", "", "| batch | images/s | decode tokens/s | KV cache MB | peak RSS MB | "
              "peak / (weights + KV) | RSS after the answer MB | (after - before load) / weights |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {b} | {fmt(e['images_per_s'], 3)} | {fmt(e['decode_tokens_per_s'])} | {fmt(e['kv_cache_mb'])} | "
              f"{fmt(e['peak_rss_mb'])} | {fmt(e['peak_rss_vs_weights_plus_kv'], 2)} | "
              f"{fmt(e['rss_after_answer_mb'])} | {fmt(e['rss_after_answer_vs_weights'], 2)} |"
              for b, e in batches.items()]
    mem, roof = report["memory"], report["roofline"]
    lines += ["", f"Weights loaded: {fmt(mem['weights_mb'])} MB; RSS before load {fmt(mem['rss_before_load_mb'])} MB, "
              f"after load {fmt(mem['rss_after_load_mb'])} MB, peak {fmt(mem['peak_rss_mb'])} MB."]
    if mem.get("stage_alone_peak_mb"):
        alone = ", ".join(f"{k} {fmt(v)}" for k, v in mem["stage_alone_peak_mb"].items())
        ratios = ", ".join(f"batch {b}: {fmt(e['peak_rss_vs_weights_kv_largest_stage'], 2)}x"
                           for b, e in batches.items())
        lines.append(f"Each stage's own peak, run alone (--memory-budget): {alone} MB. Peak RSS above the process "
                     f"before loading / (weights + KV + the largest of those): {ratios}.")
    lines += [f"GPU memory: {mem['gpu'].get('skipped') or fmt(mem['gpu'].get('used_mb')) + ' MB'}. "
              f"Jetson shared memory: {mem['jetson'].get('skipped') or fmt(mem['jetson'].get('used_mb')) + ' MB'}."]
    if "batching_speedup" in report:
        lines.append(f"Batch {max(report['config']['batch_sizes'])} vs batch 1: "
                     f"{report['batching_speedup']:.2f}x images/s.")
    lines += ["", "## Decode roofline (batch 1)", "",
              f"{roof['bytes_per_token'] / 2**20:.1f} MB read per token x {roof['tokens_per_s']:.2f} tokens/s = "
              f"{roof['achieved_gbs']:.2f} GB/s, {roof['percent_of_bandwidth']:.0f}% of this machine's measured read "
              f"bandwidth ({roof['machine_read_gbs']:.2f} GB/s)."
              + (" **Above 100%: a measurement error.**" if roof["measurement_error"] else "")]
    for b, g in roof.get("batching", {}).items():
        lines.append(f"Batch {b} decodes {g['gain']:.2f}x the tokens/s of batch 1; reading each row's KV cache and the "
                     f"weights once per step at that bandwidth, it could reach at most {g['gain_ceiling']:.2f}x.")
    if "footprint" in report:
        lines += ["", "## " + footprint_markdown(report["footprint"])]
    if "compare" in report:
        lines += ["", "## " + genai_markdown(report["compare"]["genai"])]
    if "reference" in report:
        lines += reference_markdown(report)
    if report["plots"].get("skipped"):
        lines += ["", f"Plots: {report['plots']['skipped']}"]
    else:
        lines += ["", *(f"![{p}]({p})" for p in report["plots"]["files"])]
    return "\n".join(lines) + "\n"


def reference_markdown(report: dict) -> list[str]:
    lines = ["", "## Against the PyTorch reference (batch 1, interleaved)", "",
             "| stage | runtime p50 ms | reference p50 ms | speed-up (median) | spread (min-max) |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {s} | {fmt(r['runtime_ms']['p50'])} | {fmt(r['reference_ms']['p50'])} | {fmt(r['speedup'], 2)}x | "
              f"{fmt(r['speedup_min'], 2)}-{fmt(r['speedup_max'], 2)} |" for s, r in report["reference"].items()]
    differences = report.get("reference_differences", [])
    lines += ["", "Answers (experts, display text, tokens): " + ("identical to the reference." if not differences
              else "DIFFERENT from the reference:"), *(f"- {d}" for d in differences)]
    return lines


def write_plots(report: dict, out_dir: Path) -> dict:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {"skipped": "matplotlib is not installed: pip install 'moai-edge[bench]'"}
    batches = report["batches"]
    first = next(iter(batches.values()))
    stages = [s for s in first["stages_ms"] if s not in ("total", "time_to_first_token")]

    fig, ax = plt.subplots(figsize=(8, 4))
    ours = [first["stages_ms"][s]["p50"] for s in stages]
    y = range(len(stages))
    ax.barh([i + 0.2 for i in y], ours, height=0.4, label=f"moai-edge (batch {first['batch']})")
    if "reference" in report:
        ref = [report["reference"].get(s, {}).get("reference_ms", {}).get("p50", 0) for s in stages]
        ax.barh([i - 0.2 for i in y], ref, height=0.4, label="PyTorch reference")
    ax.set_yticks(list(y), stages)
    ax.set_xlabel("p50 ms")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / PLOTS[0])

    fig, ax = plt.subplots(figsize=(5, 3.5))
    sizes = [e["batch"] for e in batches.values()]
    ax.plot(sizes, [e["images_per_s"] for e in batches.values()], marker="o")
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s")
    ax.set_xticks(sizes)
    fig.tight_layout()
    fig.savefig(out_dir / PLOTS[1])

    fig, ax = plt.subplots(figsize=(7, 3.5))
    t, mb = zip(*report["memory"]["timeline"])
    ax.plot(t, mb)
    ax.axhline(report["memory"]["weights_mb"], linestyle="--", color="grey", label="weights")
    ax.set_xlabel("s")
    ax.set_ylabel("RSS MB")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / PLOTS[2])
    plt.close("all")
    return {"files": list(PLOTS)}


def summary(report: dict) -> str:
    lines = []
    for b, e in report["batches"].items():
        s = e["stages_ms"]
        lines.append(f"batch {b}: total p50 {s['total']['p50']:.0f} ms, "
                     f"experts {s.get('experts', {}).get('p50', 0):.0f} ms, "
                     f"TTFT {s['time_to_first_token']['p50']:.0f} ms, "
                     f"decode {s['decode_per_token']['p50']:.1f} ms/token, {e['images_per_s']:.3f} images/s, "
                     f"peak RSS {e['peak_rss_mb']:.0f} MB ({e['peak_rss_vs_weights_plus_kv']:.2f}x weights + KV)")
    roof = report["roofline"]
    lines.append(f"decode: {roof['achieved_gbs']:.2f} GB/s = {roof['percent_of_bandwidth']:.0f}% of measured "
                 f"{roof['machine_read_gbs']:.2f} GB/s"
                 + ("  (ABOVE 100%: measurement error)" if roof["measurement_error"] else ""))
    if "batching_speedup" in report:
        lines.append(f"batch {max(report['config']['batch_sizes'])} vs 1: {report['batching_speedup']:.2f}x images/s")
    for b, g in roof.get("batching", {}).items():
        lines.append(f"decode batch {b} vs 1: {g['gain']:.2f}x tokens/s "
                     f"(memory-bound ceiling {g['gain_ceiling']:.2f}x)")
    if "footprint" in report:
        fp = report["footprint"]
        lines.append(f"the real {fp['family']} 7B (computed): " + ", ".join(
            f"{name} {r['total'] / GB:.1f} GB" for name, r in fp["presets"].items()) + " (report.md: per device)")
    for r in report.get("compare", {}).get("genai", []):
        lines.append(f"vs onnxruntime-genai {r['precision']} batch {r['batch']}: {r['ours_tokens_per_s']:.1f} vs "
                     f"{r['genai_tokens_per_s']:.1f} decode tokens/s ({r['ratio']:.2f}x)")
    if report.get("reference_differences"):
        lines.append("answers differ from the reference: " + "; ".join(report["reference_differences"]))
    for s, r in report.get("reference", {}).items():
        if r["speedup"] is not None:
            lines.append(f"vs reference {s:<20} {r['speedup']:.2f}x ({r['speedup_min']:.2f}-{r['speedup_max']:.2f})")
    return "\n".join(lines)
