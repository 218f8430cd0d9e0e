"""Field checks for the manifest: each takes (value, field path) and raises a ManifestError that says
what it expected and what it found."""

from __future__ import annotations

import math
import string
from collections.abc import Callable
from typing import NoReturn

import numpy as np

from ..errors import ManifestError

WEIGHT_DTYPES = ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                 "float16", "float32", "float64")  # what numpy can view a shared-weights file as
# ONNX element types by numpy name
TENSOR_DTYPES = WEIGHT_DTYPES + ("bfloat16", "int4", "uint4", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2",
                                 "float8_e5m2fnuz", "complex64", "complex128", "object")

Check = Callable[[object, str], None]  # (value, field path) -> None, or ManifestError


def shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def refuse(where: str, expected: str, found: str) -> NoReturn:
    raise ManifestError(f"manifest field '{where}': expected {expected}, found {found}" if where
                        else f"manifest: expected {expected}, found {found}")


def fail(where: str, expected: str, value) -> NoReturn:
    refuse(where, expected, shown(value))


def at(where: str, key) -> str:
    return f"{where}.{key}" if where else str(key)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(minimum: int | None = None) -> Check:
    def check(value, where):
        if not is_int(value) or (minimum is not None and value < minimum):
            fail(where, "an integer" + (f" >= {minimum}" if minimum is not None else ""), value)
    return check


def number(*, above: float | None = None, at_most: float | None = None) -> Check:
    expected = ("a finite number" + (f" > {above}" if above is not None and at_most is None else "")
                + (f" in ({above}, {at_most}]" if above is not None and at_most is not None else ""))

    def check(value, where):
        finite = is_int(value) or (isinstance(value, float) and math.isfinite(value))
        if not finite or (above is not None and value <= above) or (at_most is not None and value > at_most):
            fail(where, expected, value)
    return check


def text(*, nonempty: bool = False) -> Check:
    def check(value, where):
        if not isinstance(value, str) or (nonempty and not value):
            fail(where, "a non-empty string" if nonempty else "a string", value)
    return check


def boolean(value, where) -> None:
    if not isinstance(value, bool):
        fail(where, "true or false", value)


def one_of(choices) -> Check:
    def check(value, where):
        if not isinstance(value, str) or value not in choices:
            fail(where, f"one of {sorted(choices)}", value)
    return check


def list_of(item: Check, *, length: int | None = None, nonempty: bool = False) -> Check:
    def check(value, where):
        if not isinstance(value, list):
            fail(where, "a list", value)
        if (length is not None and len(value) != length) or (nonempty and not value):
            fail(where, f"a list of {length} items" if length is not None else "a non-empty list", value)
        for i, v in enumerate(value):
            item(v, f"{where}[{i}]")
    return check


def mapping_of(item: Check, *, nonempty: bool = False) -> Check:
    def check(value, where):
        if not isinstance(value, dict) or (nonempty and not value):
            fail(where, "a non-empty object" if nonempty else "an object", value)
        for k, v in value.items():
            item(v, f"{where}.{k}")
    return check


def optional(check: Check) -> Check:
    return lambda value, where: None if value is None else check(value, where)


def anything(value, where) -> None:
    """Free-form (`source`), or a section checked by its own rules as it is built."""


def check_section(value, where: str, rules: dict[str, Check], required=()) -> None:
    """An object with only the keys in `rules`, the `required` ones present, each passing its check."""
    if not isinstance(value, dict):
        fail(where, f"an object with keys {sorted(rules)}", value)
    unknown, missing = sorted(set(value) - set(rules)), sorted(set(required) - set(value))
    if unknown:
        refuse(where, f"keys among {sorted(rules)}", f"unexpected keys {unknown}")
    if missing:
        refuse(where, f"keys {sorted(required)}", f"{sorted(value)}, without {missing}")
    for key, v in value.items():
        rules[key](v, at(where, key))


def template(value, where) -> None:
    """A prompt template: text whose only placeholder is `{question}`."""
    TEXT(value, where)
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError:
        names = None
    if names != {"question"}:
        fail(where, "text with a '{question}' placeholder and no other placeholder or stray brace", value)


def tensor_axis(value, where) -> None:
    if not ((is_int(value) and value >= 0) or (isinstance(value, str) and value)):
        fail(where, "an axis: an integer >= 0 or a symbolic name", value)


POSITIVE, NON_NEGATIVE, NUMBER = integer(1), integer(0), number()
TEXT, NAME = text(), text(nonempty=True)
NORM_MEAN = list_of(NUMBER, length=3)
NORM_STD = list_of(number(above=0), length=3)  # a 0 divides by zero and silently changes every answer
SIZE_PAIR = list_of(POSITIVE, length=2)


def sha256_hex(value, where) -> None:
    if not (isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)):
        fail(where, "a sha256: 64 lowercase hex digits", value)


TENSOR_SPEC_RULES = {"name": NAME, "dtype": one_of(TENSOR_DTYPES), "shape": list_of(tensor_axis)}


def tensor_spec(value, where) -> None:
    check_section(value, where, TENSOR_SPEC_RULES, required=TENSOR_SPEC_RULES)


def weight_tensor(value, where) -> None:
    """One tensor of a shared-weights file: {offset, nbytes, dtype, shape}, nbytes = prod(shape) * itemsize."""
    check_section(value, where, WEIGHT_TENSOR_RULES, required=WEIGHT_TENSOR_RULES)
    expected = math.prod(value["shape"]) * np.dtype(value["dtype"]).itemsize
    if value["nbytes"] != expected:
        fail(f"{where}.nbytes", f"{expected} (shape {value['shape']} of {value['dtype']})", value["nbytes"])


WEIGHT_TENSOR_RULES = {"offset": NON_NEGATIVE, "nbytes": NON_NEGATIVE, "dtype": one_of(WEIGHT_DTYPES),
                       "shape": list_of(NON_NEGATIVE)}


def check_weight_ranges(file: str, tensors: dict[str, dict], size: int, where: str = "shared_weights") -> None:
    """Every tensor's bytes lie inside the shared-weights file of `size` bytes."""
    for name, t in tensors.items():
        if t["offset"] + t["nbytes"] > size:
            refuse(f"{where}.tensors.{name}", f"bytes inside the {size} bytes of '{file}'",
                   f"bytes {t['offset']}..{t['offset'] + t['nbytes']}")
