"""The InternLM2 SentencePiece tokenizer with `<image>` as the token added after the vocabulary.

As in the reference's Hugging Face tokenizer, text is split at the added token and each part is
encoded on its own; only ids 0, 1, 2 (unk, bos, eos) and `<image>` are special.
"""

from __future__ import annotations

from pathlib import Path

from moai_edge.engines.errors import ManifestError


class Tokenizer:
    def __init__(self, processor, image_token: str):
        self.sp = processor
        self.image_token = image_token
        self.image_token_id = processor.get_piece_size()
        self.bos_id, self.eos_id = processor.bos_id(), processor.eos_id()
        self.special_ids = {processor.unk_id(), self.bos_id, self.eos_id, self.image_token_id}

    @classmethod
    def load(cls, path: str | Path, *, image_token: str = "<image>") -> "Tokenizer":
        return cls.from_bytes(Path(path).read_bytes(), image_token=image_token, name=str(path))

    @classmethod
    def from_bytes(cls, data: bytes, *, image_token: str = "<image>", name: str = "tokenizer") -> "Tokenizer":
        import sentencepiece as spm

        try:
            processor = spm.SentencePieceProcessor(model_proto=data)
        except (OSError, RuntimeError) as exc:
            raise ManifestError(f"tokenizer '{name}' is not a SentencePiece model: {exc}") from exc
        return cls(processor, image_token)

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        ids = [self.bos_id] if add_bos else []
        for i, part in enumerate(text.split(self.image_token)):
            if i:
                ids.append(self.image_token_id)
            if part:
                ids.extend(self.sp.encode(part))
        return ids

    def decode(self, ids) -> str:
        """Skips the special ids, as `batch_decode(..., skip_special_tokens=True)` does."""
        return self.sp.decode([int(i) for i in ids if int(i) not in self.special_ids])
