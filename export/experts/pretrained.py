"""Loading the experts' published checkpoints: Hugging Face folders (OWLv2, Mask2Former) and OpenPSG's .pth.

Pickled weights (pytorch_model.bin, .pth) are read with `torch.load(weights_only=True)` only, never unpickled
otherwise; what that refuses, or any other unreadable file, is one CheckpointError naming the checkpoint, without
torch's advice to turn the check off.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

from moai_edge.engines.errors import CheckpointError

SAFE_WEIGHTS = "model.safetensors, or a pytorch_model.bin of tensors only"


def gist(exc: BaseException) -> str:
    """The first sentence of an exception's message (torch's and transformers' run to paragraphs)."""
    lines = str(exc).strip().splitlines()
    return lines[0].split(". ")[0].rstrip(".") if lines else type(exc).__name__


def pickle_problem(exc: BaseException) -> str:
    """What torch.load(weights_only=True) found instead of tensors, in a few words."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    if found:
        return f"a pickled {found.group(1)}, which weights_only=True does not unpickle"
    if isinstance(exc, pickle.UnpicklingError):
        return "data that is not a torch checkpoint of tensors"
    return f"a file torch cannot read ({gist(exc)})"  # e.g. truncated: "PytorchStreamReader failed reading zip ..."


def pickled_weights(path_or_id: str | Path) -> list[Path]:
    """The pickled weights transformers reads from a local folder: its pytorch_model*.bin when it has no safetensors."""
    folder = Path(str(path_or_id))
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return []
    return sorted(folder.glob("pytorch_model*.bin"))


def checkpoint_problem(expert: str, path_or_id: str | Path, exc: BaseException) -> str:
    """One sentence on why `path_or_id` did not load; refused pickled weights are named file by file."""
    files = pickled_weights(path_or_id)
    if isinstance(exc, pickle.UnpicklingError) or (files and isinstance(exc, (RuntimeError, OSError))):
        named = ", ".join(f"'{f}'" for f in files) or f"'{path_or_id}' (its pytorch_model.bin)"
        return (f"{expert} checkpoint {named}: expected {SAFE_WEIGHTS}, found {pickle_problem(exc)}; re-save it as "
                "model.safetensors from a whole copy you trust")
    return f"{expert} checkpoint '{path_or_id}' could not be loaded: {gist(exc)}"


def load_pretrained(model_class, path_or_id: str | Path, *, expert: str):
    """`model_class.from_pretrained` with eager attention and weights_only=True, or a CheckpointError naming the
    expert and the checkpoint."""
    from safetensors import SafetensorError

    try:
        return model_class.from_pretrained(str(path_or_id), attn_implementation="eager", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(checkpoint_problem(expert, path_or_id, exc)) from exc
