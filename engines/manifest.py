"""The engine-package format: one folder, one manifest.json naming every file with its sha256.

Export writes it, the runtime reads it; the runtime never guesses anything from file names.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import IntegrityError, ManifestError
from .protocol import TensorSpec

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Component:
    """One file of the package: an ONNX graph (`kind="onnx"`) or a raw array (`kind="npy"`)."""

    file: str
    sha256: str
    kind: str = "onnx"
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    precision: str = "fp32"
    shared_weights: str | None = None  # key into Manifest.shared_weights
    extra_files: dict[str, str] = field(default_factory=dict)  # relative file -> sha256 (ONNX external data)

    def to_json(self) -> dict:
        d = asdict(self)
        d["inputs"] = [s.to_json() for s in self.inputs]
        d["outputs"] = [s.to_json() for s in self.outputs]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Component":
        d = dict(d)
        d["inputs"] = [TensorSpec.from_json(s) for s in d.get("inputs", [])]
        d["outputs"] = [TensorSpec.from_json(s) for s in d.get("outputs", [])]
        return cls(**d)


@dataclass
class SharedWeights:
    """One raw file of tensors read once and handed to every graph that names them."""

    file: str
    sha256: str
    tensors: dict[str, dict]  # name -> {"offset", "nbytes", "dtype", "shape"}


@dataclass
class ModelDims:
    family: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int  # rows of the output head
    image_token_id: int  # the extra embedding row
    max_context: int
    image_size: int
    patch_size: int
    grid: int
    num_image_tokens: int
    num_aux_tokens: int = 0
    num_seg_classes: int = 0
    num_seg_numbers: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = 2


@dataclass
class PromptConfig:
    system: str
    image_token: str
    templates: dict[str, str]
    default_template: str = "eval"
    answer_stop: str = "[U"


@dataclass
class PreprocessConfig:
    image_size: int
    mean: list[float]
    std: list[float]
    scale: float = 255.0
    resize: str = "bilinear"
    antialias: bool = False


@dataclass
class GenerationDefaults:
    decoding: str = "greedy"
    max_new_tokens: int = 128
    temperature: float = 0.9
    top_p: float = 0.95
    top_k: int = 50
    num_beams: int = 3
    length_penalty: float = 1.0
    eos_token_ids: list[int] = field(default_factory=lambda: [2])


def _build(cls, d: dict, where: str):
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ManifestError(f"manifest section '{where}': unexpected keys {sorted(unknown)}, expected {sorted(names)}")
    try:
        return cls(**d)
    except TypeError as exc:
        raise ManifestError(f"manifest section '{where}': {exc}") from exc


@dataclass
class Manifest:
    family: str
    model: ModelDims
    components: dict[str, Component]
    tokenizer: dict  # {"file", "sha256", "add_bos"}
    prompts: PromptConfig
    preprocess: PreprocessConfig
    generation: GenerationDefaults
    shared_weights: dict[str, SharedWeights] = field(default_factory=dict)
    experts: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    root: Path | None = None

    # ---- paths -------------------------------------------------------------------
    def path(self, relative: str) -> Path:
        if self.root is None:
            raise ManifestError("manifest has no root folder; load it with Manifest.load(folder)")
        return self.root / relative

    def component(self, name: str) -> Component:
        if name not in self.components:
            raise ManifestError(f"engine package has no component '{name}'; it has {sorted(self.components)}")
        return self.components[name]

    def files(self) -> dict[str, str]:
        """Every file the package needs, relative path -> sha256."""
        out = {self.tokenizer["file"]: self.tokenizer["sha256"]}
        for c in self.components.values():
            out[c.file] = c.sha256
            out.update(c.extra_files)
        for w in self.shared_weights.values():
            out[w.file] = w.sha256
        return out

    # ---- save / load -------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "family": self.family,
            "source": self.source,
            "model": asdict(self.model),
            "components": {k: c.to_json() for k, c in self.components.items()},
            "shared_weights": {k: asdict(w) for k, w in self.shared_weights.items()},
            "tokenizer": self.tokenizer,
            "prompts": asdict(self.prompts),
            "preprocess": asdict(self.preprocess),
            "generation": asdict(self.generation),
            "experts": self.experts,
        }

    def save(self, root: Path) -> Path:
        root = Path(root)
        path = root / MANIFEST_NAME
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        self.root = root
        return path

    @classmethod
    def load(cls, root: str | Path, *, verify: bool = True) -> "Manifest":
        root = Path(root)
        path = root / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(f"no {MANIFEST_NAME} in '{root}': expected an engine package folder made by 'moai-edge export'")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ManifestError(f"{path}: schema_version {version!r}, this moai-edge reads schema {SCHEMA_VERSION}; re-export the package")
        try:
            m = cls(
                schema_version=version,
                family=d["family"],
                source=d.get("source", {}),
                model=_build(ModelDims, d["model"], "model"),
                components={k: Component.from_json(c) for k, c in d["components"].items()},
                shared_weights={k: _build(SharedWeights, w, f"shared_weights.{k}") for k, w in d.get("shared_weights", {}).items()},
                tokenizer=d["tokenizer"],
                prompts=_build(PromptConfig, d["prompts"], "prompts"),
                preprocess=_build(PreprocessConfig, d["preprocess"], "preprocess"),
                generation=_build(GenerationDefaults, d["generation"], "generation"),
                experts=d.get("experts", {}),
                root=root,
            )
        except KeyError as exc:
            raise ManifestError(f"{path}: missing key {exc}") from exc
        m.check_files(verify_hashes=verify)
        return m

    def check_files(self, *, verify_hashes: bool = True) -> None:
        for rel, digest in self.files().items():
            p = self.path(rel)
            if not p.is_file():
                raise ManifestError(f"engine package file '{rel}' named in the manifest is missing from {self.root}")
            if verify_hashes:
                found = sha256_of(p)
                if found != digest:
                    raise IntegrityError(
                        f"engine package file '{rel}' is corrupted: sha256 {found[:16]}..., manifest expects {digest[:16]}..."
                    )
