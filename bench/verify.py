"""`moai-edge verify`: every graph of a package and the runtime's greedy tokens against PyTorch.

The PyTorch reference is rebuilt from the checkpoints recorded in the manifest, so a package can be
checked on the machine that runs it, with the weights it came from. When the package has experts,
the whole pipeline is checked per image: the experts' results (PyTorch experts with the reference's
post-processing, bench.reference_experts), the verbalized text, and the final greedy tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from moai_edge.engines.errors import CheckpointError, ExportValidationError
from moai_edge.engines.manifest import Manifest
from moai_edge.export.checkpoint import load_checkpoint
from moai_edge.export.package import validate_package
from moai_edge.runtime.generation import DecodingConfig
from moai_edge.runtime.images import load_image
from moai_edge.runtime.model import Model
from moai_edge.runtime.pipeline import Pipeline
from moai_edge.runtime.samples import sample_image

from .reference_pipeline import ReferencePipeline


@dataclass
class TokenCheck:
    image: str
    runtime: list[int]
    reference: list[int]
    expert_problems: list[str] = field(default_factory=list)  # where the experts' results differ
    verbalized: tuple[str, str] | None = None  # (runtime, reference) text from the experts

    @property
    def same(self) -> bool:
        text_same = self.verbalized is None or same_up_to_rounding(*self.verbalized)
        return self.runtime == self.reference and not self.expert_problems and text_same


NUMBER = re.compile(r"-?\d+\.(\d+)")


def same_up_to_rounding(a: str | None, b: str | None) -> bool:
    """Equal text, except printed numbers may differ by one step of their last digit: float32 noise on a
    value at a rounding boundary (a box edge at 0.004999 vs 0.005001, or -0.00 vs 0.00) flips it."""
    if a == b:
        return True
    if a is None or b is None or NUMBER.sub("#", a) != NUMBER.sub("#", b):
        return False
    return all(abs(float(x.group()) - float(y.group())) <= 1.0001 * 10 ** -len(x.group(1))
               for x, y in zip(NUMBER.finditer(a), NUMBER.finditer(b)))


def compare_experts(ours: dict, ref: dict, *, score_atol: float = 1e-4, box_atol: float = 0.5) -> list[str]:
    """Differences between two experts' JSON results (ExpertResults.to_json), by field. Labels, ids, relations
    and OCR text must be equal; scores and boxes (pixels) agree within float32 noise."""
    problems = []
    for key, ident in (("segments", ("id", "label_id")), ("detections", ("label_id",))):
        a, b = [[d[k] for k in ident] for d in ours[key]], [[d[k] for k in ident] for d in ref[key]]
        if a != b:
            problems.append(f"{key}: runtime {a}, reference {b}")
            continue
        for d, e in zip(ours[key], ref[key]):
            if abs(d["score"] - e["score"]) > score_atol:
                problems.append(f"{key}: score {d['score']} vs {e['score']}")
            if key == "detections" and max(abs(x - y) for x, y in zip(d["box"], e["box"])) > box_atol:
                problems.append(f"{key}: box {d['box']} vs {e['box']}")
    for key in ("relations", "ocr"):
        a = ours[key] if key == "relations" else [line["text"] for line in ours[key]]
        b = ref[key] if key == "relations" else [line["text"] for line in ref[key]]
        if a != b:
            problems.append(f"{key}: runtime {a}, reference {b}")
    return problems


@dataclass
class VerifyReport:
    component_diffs: dict[str, float] = field(default_factory=dict)
    component_error: str | None = None
    tokens: list[TokenCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.component_error is None and all(t.same for t in self.tokens)

    def render(self) -> str:
        lines = ["component     max abs diff"]
        lines += [f"{k:<14}{v:.2e}" for k, v in self.component_diffs.items()]
        if self.component_error:
            lines.append(f"FAILED: {self.component_error}")
        for t in self.tokens:
            if t.verbalized is not None:
                lines.append(f"experts on {t.image}: " + ("identical" if not t.expert_problems else "DIFFER\n  " + "\n  ".join(t.expert_problems)))
                if t.verbalized[0] == t.verbalized[1]:
                    mark = "identical"
                elif same_up_to_rounding(*t.verbalized):
                    mark = "identical but for numbers one last-digit step apart (float32 noise at a rounding boundary)"
                else:
                    mark = f"DIFFER\n  runtime   {t.verbalized[0]!r}\n  reference {t.verbalized[1]!r}"
                lines.append(f"verbalized text on {t.image}: {mark}")
            mark = "identical" if t.runtime == t.reference else f"DIFFER\n  runtime   {t.runtime}\n  reference {t.reference}"
            lines.append(f"greedy tokens on {t.image}: {len(t.runtime)} tokens, {mark}")
        lines.append("OK" if self.ok else "MISMATCH")
        return "\n".join(lines)


def verify_package(engine_dir: Path, *, images: list[str], question: str, max_new_tokens: int = 16) -> VerifyReport:
    manifest = Manifest.load(engine_dir)
    ckpt = manifest.source.get("checkpoint")
    if not ckpt:
        raise CheckpointError(f"{engine_dir}/manifest.json records no source checkpoint to rebuild the reference from")
    torch_model, root = load_checkpoint(ckpt, family=manifest.family, vision_config=manifest.source.get("vision_config"))
    report = VerifyReport()
    try:
        report.component_diffs = validate_package(manifest, torch_model)
    except ExportValidationError as exc:
        report.component_error = str(exc)
    reference = ReferencePipeline(torch_model, root / "tokenizer.model", template=manifest.prompts.default_template)
    sources = [(p, load_image(p)) for p in images] or [("built-in sample", sample_image())]
    decoding = DecodingConfig(strategy="greedy", max_new_tokens=max_new_tokens, eos_token_ids=(manifest.model.eos_id,))
    if manifest.experts:
        report.tokens = check_pipeline(engine_dir, manifest, reference, sources, question, decoding)
        return report
    with Model.load(engine_dir) as runtime:
        for name, img in sources:
            ours = runtime.ask(img, question, decoding="greedy", max_new_tokens=max_new_tokens).tokens
            report.tokens.append(TokenCheck(str(name), ours, reference.ask(img, question, decoding=decoding)))
    return report


def check_pipeline(engine_dir: Path, manifest: Manifest, reference: ReferencePipeline, sources, question: str,
                   decoding: DecodingConfig) -> list[TokenCheck]:
    """Image -> runtime pipeline, and image -> PyTorch experts -> verbalizer -> PyTorch reference model."""
    from .reference_experts import ReferenceExperts

    checks = []
    ref_experts = ReferenceExperts(manifest)
    with Pipeline.load(engine_dir) as pipe:
        for name, img in sources:
            ours = pipe.ask(img, question, decoding="greedy", max_new_tokens=decoding.max_new_tokens)
            pixels = pipe.expert_input(img)
            ref_results = ref_experts.run(pixels)
            aux = pipe.experts.aux_inputs(ref_results)
            ref_text = aux.verbalized if manifest.family == "moai" else aux.segment_text
            tokens = reference.ask(pixels, question, aux=aux, decoding=decoding)
            checks.append(TokenCheck(str(name), ours.tokens, tokens, compare_experts(ours.experts, ref_results.to_json()),
                                     (ours.verbalized, ref_text)))
    return checks
