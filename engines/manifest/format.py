"""The engine-package format: the dataclasses manifest.json holds, written by export (`to_json`, `save`) and read by
the runtime (engines.manifest.loading), and a Manifest's way to its files.

A file is named by a path relative to the package folder and kept inside it (engines.manifest.paths) before it
is read. Hashes are checked where a file is used (engines.integrity: at most once per process, on the bytes then
used) or all at once by `verify_all`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import integrity
from ..decoding import DecodingConfig
from ..errors import ManifestError
from ..protocol import TensorSpec
from .fields import fail
from .npy import array_in
from .paths import package_file

# 2: the generation section is a DecodingConfig; the model section has no eos_id / pad_id.
# 3: the decode graph updates KV buffers (batch, kv_heads, max_len, head_dim) in place (export.gqa_decode).
# 4: the scene graph is two graphs: the mask heads run apart, on the queries post-processing reads.
# 5: an optional `tensorrt` section: the axis ranges of TensorRT's profiles and which graphs TensorRT takes. A
#    package of schema 4 is read as one without it (it runs everywhere but on TensorRT).
SCHEMA_VERSION = 5
READABLE_VERSIONS = (4, 5)
MANIFEST_NAME = "manifest.json"
FAMILIES = ("collavo", "moai")
COMPONENT_KINDS = ("onnx", "npy")


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    """The sha256 of a file, for writers of packages (readers check through engines.integrity)."""
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
    # constant inputs fed on every run: they select this component's branch of a graph file it shares with other
    # components (prefill and decode in one decoder graph: {"is_prefill": true}); `inputs` are the branch's own
    fixed_feeds: dict[str, bool] = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d["inputs"] = [s.to_json() for s in self.inputs]
        d["outputs"] = [s.to_json() for s in self.outputs]
        return d


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
    bos_id: int = 1  # end-of-sequence and padding ids are the generation section's


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
class Manifest:
    family: str
    model: ModelDims
    components: dict[str, Component]
    tokenizer: dict  # {"file", "sha256", "add_bos"}
    prompts: PromptConfig
    preprocess: PreprocessConfig
    generation: DecodingConfig  # the package's decoding defaults
    shared_weights: dict[str, SharedWeights] = field(default_factory=dict)
    experts: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    # {"axis_ranges": {axis: [min, opt, max]}, "graphs": {component: {"build": bool, "reason": str}}} (schema 5)
    tensorrt: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    root: Path | None = None
    verify_hashes: bool = True  # files read through this manifest are hashed (once per process) before use

    # ---- paths -------------------------------------------------------------------
    def path(self, relative: str, where: str = "path") -> Path:
        """The package's file `relative`, refused unless it stays inside the package folder."""
        if self.root is None:
            raise ManifestError("manifest has no root folder; load it with load_manifest(folder)")
        return package_file(self.root, relative, where)

    def component(self, name: str) -> Component:
        if name not in self.components:
            raise ManifestError(f"engine package has no component '{name}'; it has {sorted(self.components)}")
        return self.components[name]

    def file_fields(self) -> list[tuple[str, str, str]]:
        """(manifest field, relative path, sha256) of every file the package needs."""
        out = [("tokenizer.file", self.tokenizer["file"], self.tokenizer["sha256"])]
        for name, c in self.components.items():
            out.append((f"components.{name}.file", c.file, c.sha256))
            out += [(f"components.{name}.extra_files", rel, digest) for rel, digest in c.extra_files.items()]
        out += [(f"shared_weights.{name}.file", w.file, w.sha256) for name, w in self.shared_weights.items()]
        return out

    def component_files(self, name: str) -> list[str]:
        """The files component `name` loads: itself, its external data and the shared weights it names."""
        c = self.component(name)
        return [c.file, *c.extra_files, *([self.shared_weights[c.shared_weights].file] if c.shared_weights else [])]

    def files(self) -> dict[str, str]:
        """Every file the package needs, relative path -> sha256."""
        return {rel: digest for _, rel, digest in self.file_fields()}

    # ---- reading files -------------------------------------------------------------
    def file_check(self, relative: str) -> tuple[Path, str | None, str]:
        """(path, sha256 to check it against or None where this manifest skips hashes, label for messages) of a
        file the manifest names."""
        for where, rel, digest in self.file_fields():
            if rel == relative:
                expected = digest if self.verify_hashes else None
                return self.path(rel, where), expected, f"engine package file '{rel}' ({where})"
        raise ManifestError(f"'{relative}' is not a file of the engine package; it has {sorted(self.files())}")

    def read_file(self, relative: str) -> bytes:
        """The bytes of a package file (the tokenizer's), hashed once per process before they are returned."""
        return integrity.read_verified(*self.file_check(relative))

    def load_array(self, name: str, *, mmap: bool = False) -> np.ndarray:
        """The `kind="npy"` component `name` (a read-only view of the verified memory map with `mmap`, else a copy);
        never unpickles anything."""
        c, where = self.component(name), f"components.{name}"
        if c.kind != "npy":
            fail(f"{where}.kind", "'npy' for an array component", c.kind)
        mapping, _ = integrity.map_verified(*self.file_check(c.file))
        array = array_in(mapping, c, where)
        return array if mmap else np.array(array)

    def verify_all(self) -> None:
        """Hash every file of the package (each at most once per process), whatever `verify_hashes` says."""
        for where, rel, digest in self.file_fields():
            integrity.map_verified(self.path(rel, where), digest, f"engine package file '{rel}' ({where})")

    # ---- writing -----------------------------------------------------------------
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
            "generation": self.generation.to_json(),
            "experts": self.experts,
            **({"tensorrt": self.tensorrt} if self.tensorrt else {}),
        }

    def save(self, root: Path) -> Path:
        root = Path(root)
        path = root / MANIFEST_NAME
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        self.root = root
        return path
