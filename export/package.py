"""Build an engine package: every graph exported and validated, decoder weights shared, one manifest."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from moai_edge.engines.decoding import DecodingConfig
from moai_edge.engines.errors import ExportValidationError, InputError
from moai_edge.engines.manifest import Component, Manifest, ModelDims, PreprocessConfig, PromptConfig, sha256_of
from moai_edge.engines.options import RuntimeOptions
from moai_edge.engines.protocol import TensorSpec
from moai_edge.engines.registry import open_engine

from .config import CLIP_MEAN, CLIP_STD, REFERENCE_PROMPTS, ModelConfig
from .graphs import TARGETS, GraphTarget, targets_for, with_io_dtype
from .merge_decoder import SWITCH, can_merge, merge_decoder
from .modeling.vlm import VLM
from .onnx_export import FP16_IO, Tolerance, export_graph, validate_graph
from .onnx_weights import save_model, write_shared_weights
from .precision import DECODER

SHARED = DECODER  # the graphs that hold the decoder weights, in memory once for both
DECODER_WEIGHTS = "decoder.weights"
DECODER_GRAPH = "decoder.onnx"  # prefill and decode as the two branches of one graph


def io_specs(model_proto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    from onnx.helper import tensor_dtype_to_np_dtype

    def spec(v):
        t = v.type.tensor_type
        dims = tuple(d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim)
        return TensorSpec(v.name, str(np.dtype(tensor_dtype_to_np_dtype(t.elem_type))), dims)

    init = {i.name for i in model_proto.graph.initializer}
    return [spec(v) for v in model_proto.graph.input if v.name not in init], [spec(v) for v in model_proto.graph.output]


def decode_weight_bytes(manifest: Manifest) -> int:
    """The weight bytes one decode step reads: the initializers its graph (its branch of the merged decoder) uses,
    not the prefill-only ones beside them in the same file. The bench's roofline reads it from the manifest."""
    import onnx

    from .merge_decoder import branch_of
    from .onnx_weights import bytes_read

    comp = manifest.component("decode")
    model = onnx.load(str(manifest.path(comp.file)), load_external_data=False)
    return bytes_read(model, branch_of(model, prefill=False) if comp.fixed_feeds else model.graph)


def model_dims(cfg: ModelConfig) -> ModelDims:
    d, v = cfg.decoder, cfg.vision
    return ModelDims(
        family=cfg.family, hidden_size=d.hidden_size, num_layers=d.num_layers, num_heads=d.num_heads,
        num_kv_heads=d.num_kv_heads, head_dim=d.head_dim, vocab_size=d.vocab_size, image_token_id=d.image_token_id,
        max_context=cfg.max_context, image_size=v.image_size, patch_size=v.patch_size, grid=v.grid,
        num_image_tokens=v.num_patches, num_aux_tokens=cfg.compressor.num_latents if cfg.compressor else 0,
        num_seg_classes=cfg.crayon.num_classes if cfg.crayon else 0,
        num_seg_numbers=cfg.crayon.num_numbers if cfg.crayon else 0,
        bos_id=d.bos_id,
    )


def generation_defaults(cfg: ModelConfig) -> DecodingConfig:
    """The reference's decoding settings (REFERENCE.md section 1): greedy unless asked otherwise; its demo's
    sampling (temperature 0.9, top_p 0.95); its benchmarks' 3 beams and 128 new tokens; stop on eos."""
    return DecodingConfig(strategy="greedy", max_new_tokens=128, temperature=0.9, top_p=0.95, top_k=50, num_beams=3,
                          length_penalty=1.0, eos_token_ids=(cfg.decoder.eos_id,), pad_token_id=cfg.decoder.pad_id)


def package_targets(model: VLM, *, decode_io_dtype: str = "float32") -> list[GraphTarget]:
    """The family's backbone graphs; the decode graph's floating-point inputs and outputs in `decode_io_dtype`."""
    return [with_io_dtype(t, decode_io_dtype) if t.name == "decode" else t for t in targets_for(model.cfg.family)]


def export_graphs(model: VLM, out_dir: Path, work: Path, targets: list[GraphTarget]) -> dict[str, Component]:
    """Every target as a graph file. Prefill and decode have their weights deduplicated into one file
    (DECODER_WEIGHTS); they are then one graph with a branch each (export.merge_decoder), or, when their IO types
    differ (a decode graph with float16 IO), two graphs naming the weights file as shared weights."""
    import onnx

    for t in targets:
        export_graph(t, model, work / f"{t.name}.onnx")
    protos = {n: onnx.load(str(work / f"{n}.onnx")) for n in SHARED}
    shared_spec, rewritten = write_shared_weights(protos, out_dir, DECODER_WEIGHTS)
    merged = can_merge(rewritten["prefill"], rewritten["decode"])
    components = {}
    for t in targets:
        if merged and t.name in SHARED:
            continue
        proto = rewritten.get(t.name) or onnx.load(str(work / f"{t.name}.onnx"))
        inputs, outputs = io_specs(proto)
        digest = save_model(proto, out_dir / f"{t.name}.onnx")
        components[t.name] = Component(file=f"{t.name}.onnx", sha256=digest, inputs=inputs, outputs=outputs,
                                       shared_weights="decoder" if t.name in SHARED else None)
    if merged:
        digest = save_model(merge_decoder(rewritten["prefill"], rewritten["decode"]), out_dir / DECODER_GRAPH)
        weights = {DECODER_WEIGHTS: shared_spec.sha256}
        for name, proto in rewritten.items():
            inputs, outputs = io_specs(proto)
            components[name] = Component(file=DECODER_GRAPH, sha256=digest, inputs=inputs, outputs=outputs,
                                         extra_files=weights, fixed_feeds={SWITCH: name == "prefill"})
        shared_spec = None
    components["_shared"] = shared_spec  # popped by the caller
    return components


def with_settings(section: dict, settings: dict[str, dict]) -> None:
    """Replace settings of the experts' manifest sections; an expert or a setting the section does not have is
    refused by name."""
    for name, changes in settings.items():
        if name not in section:
            raise InputError(f"expert settings: expected an expert of the package {sorted(section)}, found '{name}'")
        unknown = sorted(set(changes) - set(section[name]))
        if unknown:
            raise InputError(f"expert settings of '{name}': expected settings among {sorted(section[name])}, "
                             f"found {unknown}")
        section[name].update(changes)


def build_package(model: VLM, *, tokenizer_file: Path, out_dir: Path, source: dict, validate: bool = True,
                  experts: dict[str, str | Path] | None = None, decode_io_dtype: str = "float32",
                  expert_settings: dict[str, dict] | None = None) -> Manifest:
    """Export `model` (and the expert checkpoints named in `experts`) into `out_dir` and return the saved manifest.
    `decode_io_dtype`: "float16" gives a decode graph that takes and returns float16 tensors (inputs_embeds, past
    and present keys/values, logits) around its float32 computation. `expert_settings`: per expert, settings of its
    manifest section to replace (thresholds: the world packages silence their untrained detector and scene graph)."""
    from .experts.package import export_experts

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    expert_section, expert_diffs = {}, {}
    with tempfile.TemporaryDirectory(prefix="moai-edge-export-") as work:
        components = export_graphs(model, out_dir, Path(work), package_targets(model, decode_io_dtype=decode_io_dtype))
        if experts:
            expert_components, expert_section, expert_diffs = export_experts(cfg, out_dir, Path(work), **experts)
            components.update(expert_components)
            with_settings(expert_section, expert_settings or {})
    shared_spec = components.pop("_shared")
    table = model.model.tok_embeddings.weight.detach().float().numpy()
    np.save(out_dir / "embed_tokens.npy", table)
    components["embedding"] = Component(file="embed_tokens.npy", sha256=sha256_of(out_dir / "embed_tokens.npy"),
                                        kind="npy", outputs=[TensorSpec("embed_tokens", "float32", tuple(table.shape))])
    shutil.copyfile(tokenizer_file, out_dir / "tokenizer.model")
    manifest = Manifest(
        family=cfg.family,
        model=model_dims(cfg),
        components=components,
        shared_weights={"decoder": shared_spec} if shared_spec else {},
        tokenizer={"file": "tokenizer.model", "sha256": sha256_of(out_dir / "tokenizer.model"), "add_bos": True},
        prompts=PromptConfig(**REFERENCE_PROMPTS),
        preprocess=PreprocessConfig(image_size=cfg.vision.image_size, mean=list(CLIP_MEAN), std=list(CLIP_STD)),
        generation=generation_defaults(cfg),
        experts=expert_section,
        source={**source, "model_config": cfg.to_json()},
    )
    manifest.save(out_dir)
    manifest.source["decode_weight_bytes"] = decode_weight_bytes(manifest)
    manifest.tensorrt = tensorrt_section(manifest)
    if validate:
        manifest.source["validation_max_abs_diff"] = {**validate_package(manifest, model), **expert_diffs}
    manifest.save(out_dir)
    return manifest


def graph_tolerance(name: str, model: VLM, tol: Tolerance, io_dtype: str) -> Tolerance:
    """MoAI's prefill rounds its gate weights through fp16 as the reference does. Where the graph's and
    PyTorch's fp32 noise put a gate logit on two sides of an fp16 rounding boundary, that position's gate
    weight differs by one fp16 step (2^-11 of a weight in [0.5, 1)) from there on, and the mixed state by that step
    times the difference of two branches (up to twice their largest magnitude): a difference on the scale of the
    whole output, not of each element, so the bound is relative to each output's largest magnitude, 2^-9 of it
    (measured: up to 1.2e-3 after a few training steps of the world preset, whose mixer is its last layer).
    A graph with float16 IO is held to FP16_IO (one fp16 step, and the same greedy tokens)."""
    if io_dtype == "float16":
        return FP16_IO
    if name == "prefill" and model.cfg.decoder.mixer_layers:
        return replace(tol, of_max=True, rtol=max(tol.rtol, 2.0**-9))
    if name == "vision":  # a deep stack: trained features reach ~90, and an element near 0 carries their noise
        return replace(tol, of_max=True)
    return tol


def io_dtype_of(component: Component, where: str) -> str:
    """The one dtype of a graph's floating-point inputs (float32, or float16 for an fp16-IO graph)."""
    dtypes = {spec.dtype for spec in component.inputs if spec.dtype.startswith("float")}
    if len(dtypes) > 1:
        raise ExportValidationError(f"{where}: expected one floating-point input dtype, found {sorted(dtypes)}")
    return dtypes.pop() if dtypes else "float32"


def in_place(run):
    """`run(feeds, out)` as `run(feeds)`, for any graph: an output that has a `past_{name}` input (the decode
    graph's KV buffers) is written into a copy of that input, fed in its place, as the runtime does."""

    def run_fed(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {k: np.array(v) if k.startswith("past_") else v for k, v in feeds.items()}
        return run(feeds, {k[len("past_"):]: v for k, v in feeds.items() if k.startswith("past_")})

    return run_fed


def validate_package(manifest: Manifest, model: VLM, *, tol: Tolerance = Tolerance()) -> dict[str, float]:
    """Every graph, loaded as the runtime loads it (shared weights included), against PyTorch."""
    worst = {}
    for name, comp in manifest.components.items():
        if comp.kind != "onnx" or name not in TARGETS:  # experts are validated when exported
            continue
        io_dtype = io_dtype_of(comp, name)
        with open_engine(manifest, name, RuntimeOptions()) as engine:
            diffs = validate_graph(with_io_dtype(TARGETS[name], io_dtype), model, in_place(engine.run),
                                   tol=graph_tolerance(name, model, tol, io_dtype))
        worst[name] = max(diffs.values())
    return worst


def axis_ranges(manifest: Manifest) -> dict[str, list[int]]:
    """[min, opt, max] of the symbolic axes whose range the package knows, for TensorRT's optimization profiles: a
    robot's batch 1 (up to 8 captioning), prompts up to the context (opt: the image and a question), the KV buffer,
    the detector's fixed query count."""
    d = manifest.model
    ranges = {"batch": [1, 1, 8], "seq": [1, min(d.num_image_tokens + 64, d.max_context), d.max_context],
              "max_len": [1, d.max_context, d.max_context]}
    if "detector_queries" in manifest.components:
        n = int(manifest.component("detector_queries").outputs[0].shape[0])
        ranges["queries"] = [n, n, n]
    return ranges


def tensorrt_section(manifest: Manifest) -> dict:
    """The manifest's `tensorrt` section: the axis ranges, and for each graph whether TensorRT's minimum supported
    version takes it, from the static check against onnx-tensorrt's operator matrix (engines.compat); a graph it
    does not take runs on the CUDA provider, and the first reason is recorded."""
    from moai_edge.engines.compat import TENSORRT_MINIMUM, check_package

    graphs = {}
    for name, report in check_package(manifest, with_checker=False).items():
        problems = report.tensorrt[TENSORRT_MINIMUM]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        graphs[name] = {"build": not problems, **({"reason": problems[0] + more} if problems else {})}
    return {"axis_ranges": axis_ranges(manifest), "graphs": graphs}
