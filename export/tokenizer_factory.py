"""A small SentencePiece model trained on the spot for tiny checkpoints.

It has what the real InternLM2 tokenizer has where parity depends on it: unk 0, bos 1, eos 2
(the only special ids), `[UNUSED_TOKEN_145]` / `[UNUSED_TOKEN_146]` as ordinary pieces, byte
fallback, no text normalisation. `<image>` is not a piece: it is the token added after the
vocabulary, as the reference adds it.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

from .config import REFERENCE_PROMPTS

_WORDS = (
    "a an the is are of in on at with and or to what where which who how many color colour image picture photo "
    "describe detail details object objects person people man woman child dog cat car bus truck bicycle tree sky "
    "road building table chair cup bottle book phone laptop left right top bottom near behind front holding "
    "sitting standing riding walking wearing looking red green blue white black yellow small large two three "
    "there includes information none answer question user assistant yes no text says number box"
).split()


def _corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = [REFERENCE_PROMPTS["system"], *REFERENCE_PROMPTS["templates"].values()]
    for _ in range(3000):
        words = rng.choices(_WORDS, k=rng.randint(3, 14))
        line = " ".join(words).capitalize() + rng.choice([".", "?", "!", ","])
        if rng.random() < 0.3:
            line += f" ({'#'}{rng.randint(1, 20)} {rng.choice(_WORDS)}) [{rng.random():.2f}, {rng.random():.2f}]"
        if rng.random() < 0.2:
            line = f"[UNUSED_TOKEN_146]user\n{line}[UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]assistant\n"
        lines.append(line)
    return lines


def train_tiny_tokenizer(out_dir: Path, *, vocab_size: int = 400, seed: int = 0) -> Path:
    """Write `tokenizer.model` and `tokenizer_config.json` to `out_dir`; deterministic for a seed."""
    return train_sentencepiece(out_dir, _corpus(seed), vocab_size=vocab_size)


def train_sentencepiece(out_dir: Path, lines: list[str], *, vocab_size: int, symbols: tuple[str, ...] = ()) -> Path:
    """A BPE model on `lines` with the InternLM2 special ids; `symbols` are extra pieces that are always whole."""
    import sentencepiece as spm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        user_defined_symbols=["[UNUSED_TOKEN_145]", "[UNUSED_TOKEN_146]", *symbols],
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        split_digits=True, num_threads=1, shuffle_input_sentence=False, hard_vocab_limit=False,
        minloglevel=2,
    )
    path = out_dir / "tokenizer.model"
    path.write_bytes(model.getvalue())
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "InternLM2Tokenizer", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>",
        "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "padding_side": "left",
    }, indent=2) + "\n")
    return path
