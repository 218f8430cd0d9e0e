"""The engine-package format: one folder, one manifest.json naming every file with its sha256.

Export writes it, the runtime reads it; the runtime never guesses anything from file names. Loading
checks every field (type, range, the components the experts name), keeps every path inside the
package folder before any file is read, then checks the files: present, shared-weight ranges inside
their file, npy headers. Hashes are checked where a file is used (engines.integrity: at most once per
process, on the bytes then used) or all at once by `verify_all`. Every refusal is a ManifestError
naming the field or file.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from . import integrity
from .decoding import STRATEGIES, DecodingConfig
from .errors import ManifestError
from .manifest_fields import (NAME, NON_NEGATIVE, NORM_MEAN, NORM_STD, NUMBER, POSITIVE, SIZE_PAIR, TEXT, Check, anything, boolean,
                              check_section, check_weight_ranges, fail, integer, is_int, list_of, mapping_of,
                              number, one_of, optional, refuse, sha256_hex, shown, template, tensor_spec,
                              weight_tensor)
from .npy import array_in, check_npy_file
from .protocol import TensorSpec

# 2: the generation section is a DecodingConfig; the model section has no eos_id / pad_id.
# 3: the decode graph updates KV buffers (batch, kv_heads, max_len, head_dim) in place (export.gqa_decode).
# 4: the scene graph is two graphs: the mask heads run apart, on the queries post-processing reads.
SCHEMA_VERSION = 4
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

    @classmethod
    def from_json(cls, d: dict, where: str = "component") -> "Component":
        check_section(d, where, COMPONENT_RULES, required=required_fields(cls))
        d = dict(d)
        d["inputs"] = [TensorSpec.from_json(s) for s in d.get("inputs", [])]
        d["outputs"] = [TensorSpec.from_json(s) for s in d.get("outputs", [])]
        return cls(**d)


COMPONENT_RULES = {"file": NAME, "sha256": sha256_hex, "kind": one_of(COMPONENT_KINDS), "inputs": list_of(tensor_spec),
                   "outputs": list_of(tensor_spec), "precision": NAME, "shared_weights": optional(NAME),
                   "extra_files": mapping_of(sha256_hex), "fixed_feeds": mapping_of(boolean)}


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


SECTION_RULES: dict[type, dict[str, Check]] = {
    SharedWeights: {"file": NAME, "sha256": sha256_hex, "tensors": mapping_of(weight_tensor)},
    ModelDims: {"family": one_of(FAMILIES),
                **{k: POSITIVE for k in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "vocab_size",
                                         "max_context", "image_size", "patch_size", "grid", "num_image_tokens")},
                **{k: NON_NEGATIVE for k in ("image_token_id", "num_aux_tokens", "num_seg_classes", "num_seg_numbers",
                                             "bos_id")}},
    PromptConfig: {"system": TEXT, "image_token": NAME, "templates": mapping_of(template, nonempty=True),
                   "default_template": NAME, "answer_stop": NAME},
    PreprocessConfig: {"image_size": POSITIVE, "mean": NORM_MEAN, "std": NORM_STD, "scale": number(above=0),
                       "resize": NAME, "antialias": boolean},
    DecodingConfig: {"strategy": one_of(STRATEGIES), "max_new_tokens": POSITIVE, "temperature": number(above=0),
                     "top_p": number(above=0, at_most=1), "top_k": NON_NEGATIVE, "num_beams": POSITIVE,
                     "length_penalty": NUMBER, "eos_token_ids": list_of(NON_NEGATIVE, nonempty=True),
                     "pad_token_id": NON_NEGATIVE, "seed": optional(NON_NEGATIVE)},
}
TOKENIZER_RULES = {"file": NAME, "sha256": sha256_hex, "add_bos": boolean}

# Each expert section names its graphs (and the detector its query embeddings) among the components
# and carries the settings of the runtime's config for it; settings not listed here are ignored.
EXPERT_COMPONENTS = {"panoptic": {"component": "onnx"}, "detector": {"component": "onnx", "queries": "npy"},
                     "scene_graph": {"component": "onnx", "masks": "onnx"}, "ocr": {"det": "onnx", "cls": "onnx", "rec": "onnx"}}
EXPERT_SETTINGS: dict[str, Check] = {
    "source": TEXT, "labels": list_of(TEXT, nonempty=True), "predicates": list_of(TEXT, nonempty=True),
    "mean": NORM_MEAN, "std": NORM_STD, "det_mean": NORM_MEAN, "det_std": NORM_STD,
    "scale": SIZE_PAIR, "cls_shape": SIZE_PAIR, "rec_shape": SIZE_PAIR,
    **{k: POSITIVE for k in ("image_size", "target_size", "size_divisor", "max_per_img", "num_things", "num_rel",
                             "limit_side_len", "max_candidates", "min_size", "batch")},
    **{k: NUMBER for k in ("threshold", "mask_threshold", "overlap_mask_area_threshold", "keep_score", "entity_score",
                           "relation_score", "thresh", "box_thresh", "unclip_ratio", "cls_thresh", "drop_score",
                           "min_confidence")},
}


def required_fields(cls) -> set[str]:
    return {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}


def build_section(cls, d, where: str):
    check_section(d, where, SECTION_RULES[cls], required=required_fields(cls))
    return cls.from_json(d) if cls is DecodingConfig else cls(**d)


def component_reference(value, where: str, components: dict[str, Component], kind: str) -> None:
    if value is MISSING:
        refuse(where, f"the name of a component of kind '{kind}'", "no such key")
    if not isinstance(value, str) or value not in components:
        fail(where, f"the name of a component of kind '{kind}', one of {sorted(components)}", value)
    if components[value].kind != kind:
        refuse(where, f"a component of kind '{kind}'", f"'{value}' of kind '{components[value].kind}'")


def check_experts(experts, components: dict[str, Component]) -> None:
    """Empty (a package exported with --no-experts), or a panoptic section and any of the others."""
    if not isinstance(experts, dict):
        fail("experts", "an object of expert sections", experts)
    unknown = sorted(set(experts) - set(EXPERT_COMPONENTS))
    if unknown:
        refuse("experts", f"sections among {sorted(EXPERT_COMPONENTS)}", f"unexpected sections {unknown}")
    if experts and "panoptic" not in experts:
        refuse("experts", "a 'panoptic' section whenever experts are packaged", f"sections {sorted(experts)}")
    for name, section in experts.items():
        if not isinstance(section, dict):
            fail(f"experts.{name}", "an object", section)
        for key, kind in EXPERT_COMPONENTS[name].items():
            component_reference(section.get(key, MISSING), f"experts.{name}.{key}", components, kind)
        for key, value in section.items():
            if key in EXPERT_SETTINGS:
                EXPERT_SETTINGS[key](value, f"experts.{name}.{key}")


def check_agreement(m: "Manifest") -> None:
    """Fields that must agree with each other."""
    d = m.model
    pairs = [("model.family", m.family, d.family), ("model.grid", d.image_size // d.patch_size, d.grid),
             ("model.num_image_tokens", d.grid * d.grid, d.num_image_tokens),
             ("preprocess.image_size", d.image_size, m.preprocess.image_size)]
    for where, expected, found in pairs:
        if expected != found:
            fail(where, f"{expected!r} to agree with the rest of the manifest", found)
    if d.num_heads % d.num_kv_heads:
        fail("model.num_kv_heads", f"a divisor of num_heads {d.num_heads}", d.num_kv_heads)
    for where, token in [("model.bos_id", d.bos_id), ("generation.pad_token_id", m.generation.pad_token_id),
                         *((f"generation.eos_token_ids[{i}]", t) for i, t in enumerate(m.generation.eos_token_ids))]:
        if token >= d.vocab_size:
            fail(where, f"a token id below vocab_size {d.vocab_size}", token)
    if d.image_token_id > d.vocab_size:
        fail("model.image_token_id", f"at most vocab_size {d.vocab_size} (the extra embedding row)", d.image_token_id)
    if m.prompts.default_template not in m.prompts.templates:
        fail("prompts.default_template", f"one of the templates {sorted(m.prompts.templates)}", m.prompts.default_template)
    for name, c in m.components.items():
        if c.shared_weights is not None and c.shared_weights not in m.shared_weights:
            fail(f"components.{name}.shared_weights", f"one of the shared weights {sorted(m.shared_weights)}",
                 c.shared_weights)


# ---- package files -------------------------------------------------------------------------
def package_file(root: Path, relative, where: str) -> Path:
    """root/relative after checking it stays inside root: relative, no '..', no symlink leading out. Reads nothing."""
    if not isinstance(relative, str) or not relative or "\0" in relative:
        fail(where, "a relative path inside the package folder", relative)
    as_posix, as_windows = PurePosixPath(relative), PureWindowsPath(relative)
    if as_posix.is_absolute() or as_windows.is_absolute() or as_windows.drive or as_windows.root:
        fail(where, "a path relative to the package folder", relative)
    if ".." in as_windows.parts:  # both separators
        fail(where, "a path inside the package folder, without '..'", relative)
    base = Path(root).resolve()
    try:
        target = (base / relative).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise ManifestError(f"manifest field '{where}': path '{relative}' cannot be resolved: {exc}") from exc
    if not target.is_relative_to(base):
        refuse(where, f"a file inside the package folder {base}", f"'{relative}' leading to {target} (a symlink out)")
    return Path(root) / relative


# ---- the manifest ----------------------------------------------------------------------------
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
    schema_version: int = SCHEMA_VERSION
    root: Path | None = None
    verify_hashes: bool = True  # files read through this manifest are hashed (once per process) before use

    # ---- paths -------------------------------------------------------------------
    def path(self, relative: str, where: str = "path") -> Path:
        """The package's file `relative`, refused unless it stays inside the package folder."""
        if self.root is None:
            raise ManifestError("manifest has no root folder; load it with Manifest.load(folder)")
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
            "generation": self.generation.to_json(),
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
        """Parse and check manifest.json and the package's files, hashing them all now unless `verify=False` (uncached;
        the runtime uses `load_manifest`, which hashes each file where it is first used)."""
        m = cls.parse(root, verify_hashes=verify)
        if verify:
            m.verify_all()
        return m

    @classmethod
    def parse(cls, root: str | Path, *, verify_hashes: bool = True) -> "Manifest":
        """manifest.json parsed and checked, and the package's files: paths, presence, sizes, npy headers; no hashes."""
        root = Path(root)
        path = root / MANIFEST_NAME
        d = read_manifest_json(path)
        try:
            m = cls.from_json(d, root)
        except ManifestError as exc:
            raise ManifestError(f"{path}: {exc}") from exc
        m.verify_hashes = verify_hashes
        m.check_files()
        return m

    @classmethod
    def from_json(cls, d: dict, root: Path | None = None) -> "Manifest":
        check_schema_version(d)
        check_section(d, "", TOP_LEVEL_RULES, required=TOP_LEVEL_REQUIRED)
        check_section(d["tokenizer"], "tokenizer", TOKENIZER_RULES, required=("file", "sha256"))
        components = {k: Component.from_json(c, f"components.{k}") for k, c in d["components"].items()}
        check_experts(d.get("experts", {}), components)
        m = cls(
            schema_version=d["schema_version"], family=d["family"], source=d.get("source", {}),
            model=build_section(ModelDims, d["model"], "model"), components=components,
            shared_weights={k: build_section(SharedWeights, w, f"shared_weights.{k}")
                            for k, w in d.get("shared_weights", {}).items()},
            tokenizer=d["tokenizer"], prompts=build_section(PromptConfig, d["prompts"], "prompts"),
            preprocess=build_section(PreprocessConfig, d["preprocess"], "preprocess"),
            generation=build_section(DecodingConfig, d["generation"], "generation"),
            experts=d.get("experts", {}), root=root,
        )
        check_agreement(m)
        return m

    def check_files(self) -> None:
        """Paths first (nothing is read before every path is known to stay inside the package), then presence,
        shared-weight ranges, npy headers."""
        found = [(where, rel, digest, self.path(rel, where)) for where, rel, digest in self.file_fields()]
        for where, rel, _, p in found:
            if not p.is_file():
                raise ManifestError(f"engine package file '{rel}' ({where}) named in the manifest is missing from "
                                    f"{self.root} (or is not a regular file)")
        for name, w in self.shared_weights.items():
            check_weight_ranges(w.file, w.tensors, self.path(w.file).stat().st_size, f"shared_weights.{name}")
        for name, c in self.components.items():
            if c.kind == "npy":
                check_npy_file(self.path(c.file), c, f"components.{name}")


def check_schema_version(d: dict) -> None:
    version = d.get("schema_version")
    if not is_int(version) or version != SCHEMA_VERSION:
        raise ManifestError(f"manifest field 'schema_version': expected {SCHEMA_VERSION} (the schema this moai-edge reads; "
                            f"re-export the package), found {shown(version)}")


TOP_LEVEL_RULES: dict[str, Check] = {
    "schema_version": integer(), "family": one_of(FAMILIES), **{k: mapping_of(anything) for k in (
        "source", "components", "shared_weights", "experts")},
    **{k: anything for k in ("model", "tokenizer", "prompts", "preprocess", "generation")}}
TOP_LEVEL_REQUIRED = ("schema_version", "family", "model", "components", "tokenizer", "prompts", "preprocess", "generation")


def read_manifest_json(path: Path) -> dict:
    """The manifest as a JSON object, or a ManifestError saying why not."""
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_NAME} in '{path.parent}': expected an engine package folder made by "
                            f"'moai-edge export'")
    try:
        d = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: expected UTF-8 JSON text, found a byte that is not UTF-8 ({exc})") from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, an integer of too many digits, nesting too deep
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(d, dict):
        kinds = {"list": "an array", "str": "a string", "bool": "a boolean", "NoneType": "null"}
        kind = kinds.get(type(d).__name__, "a number")
        raise ManifestError(f"{path}: expected a JSON object at the top, found {kind}")
    return d


# ---- once per process ------------------------------------------------------------------------
_cache_lock = threading.Lock()
_cache: dict[tuple[Path, bool], tuple[tuple[int, int], Manifest]] = {}


def load_manifest(root: str | Path, *, verify_hashes: bool = True) -> Manifest:
    """The package's manifest, parsed once per process (again only when manifest.json changes): checked as
    `Manifest.parse` checks it; with `verify_hashes` each file is hashed where it is first opened through the
    engines layer. The object is shared: treat it as read-only."""
    resolved = Path(root).resolve()
    try:
        st = (resolved / MANIFEST_NAME).stat()
    except OSError:
        return Manifest.parse(root, verify_hashes=verify_hashes)  # the same message as an uncached load
    key, signature = (resolved, verify_hashes), (st.st_size, st.st_mtime_ns)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None and cached[0] == signature:
            return cached[1]
        m = Manifest.parse(root, verify_hashes=verify_hashes)
        _cache[key] = (signature, m)
        return m
