"""`moai-edge verify`: every graph of a package and the runtime's greedy tokens against PyTorch.

The PyTorch reference is rebuilt from the checkpoint recorded in the manifest, so a package can be
checked on the machine that runs it, with the weights it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from moai_edge.engines.errors import CheckpointError, ExportValidationError
from moai_edge.engines.manifest import Manifest
from moai_edge.export.checkpoint import load_checkpoint
from moai_edge.export.package import validate_package
from moai_edge.runtime.generation import DecodingConfig
from moai_edge.bench.reference_pipeline import ReferencePipeline
from moai_edge.runtime.images import load_image
from moai_edge.runtime.model import Model
from moai_edge.runtime.samples import sample_image


@dataclass
class TokenCheck:
    image: str
    runtime: list[int]
    reference: list[int]

    @property
    def same(self) -> bool:
        return self.runtime == self.reference


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
            mark = "identical" if t.same else f"DIFFER\n  runtime   {t.runtime}\n  reference {t.reference}"
            lines.append(f"greedy tokens on {t.image}: {len(t.runtime)} tokens, {mark}")
        lines.append("OK" if self.ok else "MISMATCH")
        return "\n".join(lines)


def verify_package(engine_dir: Path, *, images: list[str], question: str, max_new_tokens: int = 16) -> VerifyReport:
    manifest = Manifest.load(engine_dir)
    ckpt = manifest.source.get("checkpoint")
    if not ckpt:
        raise CheckpointError(f"{engine_dir}/manifest.json records no source checkpoint to rebuild the reference from")
    torch_model, root = load_checkpoint(ckpt, family=manifest.family)
    report = VerifyReport()
    try:
        report.component_diffs = validate_package(manifest, torch_model)
    except ExportValidationError as exc:
        report.component_error = str(exc)
    reference = ReferencePipeline(torch_model, root / "tokenizer.model", template=manifest.prompts.default_template)
    sources = [(p, load_image(p)) for p in images] or [("built-in sample", sample_image())]
    with Model.load(engine_dir) as runtime:
        for name, img in sources:
            ours = runtime.ask(img, question, decoding="greedy", max_new_tokens=max_new_tokens).tokens
            ref = reference.ask(img, question, decoding=DecodingConfig(strategy="greedy", max_new_tokens=max_new_tokens,
                                                                      eos_token_ids=(manifest.model.eos_id,)))
            report.tokens.append(TokenCheck(str(name), ours, [int(t) for t in ref]))
    return report
