"""`moai-edge verify`: every graph of a package and the runtime's answers against PyTorch.

The PyTorch reference is rebuilt from the checkpoints recorded in the manifest (bench.reference), so a
package can be checked on the machine that runs it, with the weights it came from. Per image, the
runtime pipeline and the reference pipeline answer the same request, and bench.compare compares the
experts' results (when the package has experts), the display text and the greedy tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from moai_edge.engines.errors import ExportValidationError
from moai_edge.engines.options import RuntimeOptions
from moai_edge.export.package import validate_package
from moai_edge.runtime import Pipeline, Request, Result, load_image, sample_image

from .results import compare_result, same_up_to_rounding
from ..reference.pipeline import ReferencePipeline


@dataclass
class ImageCheck:
    image: str
    runtime: Result
    reference: Result
    problems: list[str]  # bench.compare.compare_result's, each starting with 'experts', 'display text' or 'tokens'
    experts: bool  # the package has experts: their results and the display text are part of the check

    @property
    def same(self) -> bool:
        return not self.problems

    def render(self) -> list[str]:
        lines = []
        if self.experts:
            found = [p.removeprefix("experts ") for p in self.problems if p.startswith("experts ")]
            lines.append(f"experts on {self.image}: "
                         + ("identical" if not found else "DIFFER\n  " + "\n  ".join(found)))
            a, b = self.runtime.verbalized, self.reference.verbalized
            if a == b:
                mark = "identical"
            elif same_up_to_rounding(a, b):
                mark = "identical but for numbers one last-digit step apart (float32 noise at a rounding boundary)"
            else:
                mark = f"DIFFER\n  runtime   {a!r}\n  reference {b!r}"
            lines.append(f"verbalized text on {self.image}: {mark}")
        a, b = self.runtime.tokens, self.reference.tokens
        mark = "identical" if a == b else f"DIFFER\n  runtime   {a}\n  reference {b}"
        lines.append(f"greedy tokens on {self.image}: {len(a)} tokens, {mark}")
        return lines


@dataclass
class VerifyReport:
    component_diffs: dict[str, float] = field(default_factory=dict)
    component_error: str | None = None
    images: list[ImageCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.component_error is None and all(c.same for c in self.images)

    def render(self) -> str:
        lines = ["component     max abs diff"]
        lines += [f"{k:<14}{v:.2e}" for k, v in self.component_diffs.items()]
        if self.component_error:
            lines.append(f"FAILED: {self.component_error}")
        for check in self.images:
            lines += check.render()
        lines.append("OK" if self.ok else "MISMATCH")
        return "\n".join(lines)


def verify_package(engine_dir: Path, *, images: list[str], question: str, max_new_tokens: int = 16,
                   options: RuntimeOptions | None = None) -> VerifyReport:
    """Each graph against its PyTorch module, then each image (none: a built-in sample) through both pipelines."""
    options = options or RuntimeOptions()
    report = VerifyReport()
    with ReferencePipeline.load(engine_dir, options) as reference:
        try:
            report.component_diffs = validate_package(reference.manifest, reference.model)
        except ExportValidationError as exc:
            report.component_error = str(exc)
        sources = [(str(p), load_image(p)) for p in images] or [("built-in sample", sample_image())]
        with Pipeline.load(engine_dir, options) as pipe:
            decoding = pipe.decoding("greedy", max_new_tokens=max_new_tokens)
            for name, img in sources:
                request = [Request(img, question, decoding, id=name)]
                ours, theirs = pipe.run(request)[0], reference.run(request)[0]
                report.images.append(ImageCheck(name, ours, theirs, compare_result(ours, theirs),
                                                bool(pipe.manifest.experts)))
    return report
