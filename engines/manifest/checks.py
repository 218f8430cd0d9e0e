"""Checks beyond one field: the schema version, the components the experts name, the fields that must agree with
each other, and the package's files on disk (paths first, then presence, shared-weight ranges, npy headers)."""

from __future__ import annotations

from dataclasses import MISSING

from ..errors import ManifestError
from .fields import check_weight_ranges, fail, is_int, refuse, shown
from .format import READABLE_VERSIONS, SCHEMA_VERSION, Component, Manifest
from .npy import check_npy_file
from .rules import EXPERT_COMPONENTS, EXPERT_SETTINGS


def check_schema_version(d: dict) -> None:
    version = d.get("schema_version")
    if not is_int(version) or version not in READABLE_VERSIONS:
        raise ManifestError(f"manifest field 'schema_version': expected {SCHEMA_VERSION} (the schema this moai-edge "
                            f"writes; it reads {', '.join(map(str, READABLE_VERSIONS))}; re-export the package), "
                            f"found {shown(version)}")


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


def check_agreement(m: Manifest) -> None:
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
        fail("prompts.default_template", f"one of the templates {sorted(m.prompts.templates)}",
             m.prompts.default_template)
    for name, c in m.components.items():
        if c.shared_weights is not None and c.shared_weights not in m.shared_weights:
            fail(f"components.{name}.shared_weights", f"one of the shared weights {sorted(m.shared_weights)}",
                 c.shared_weights)


def check_files(m: Manifest) -> None:
    """Paths first (nothing is read before every path is known to stay inside the package), then presence,
    shared-weight ranges, npy headers. No hashes."""
    found = [(where, rel, m.path(rel, where)) for where, rel, _ in m.file_fields()]
    for where, rel, p in found:
        if not p.is_file():
            raise ManifestError(f"engine package file '{rel}' ({where}) named in the manifest is missing from "
                                f"{m.root} (or is not a regular file)")
    for name, w in m.shared_weights.items():
        check_weight_ranges(w.file, w.tensors, m.path(w.file).stat().st_size, f"shared_weights.{name}")
    for name, c in m.components.items():
        if c.kind == "npy":
            check_npy_file(m.path(c.file), c, f"components.{name}")
