"""The asking surface shared by the runtime's Pipeline and the PyTorch reference pipeline (bench/reference):
given `manifest` and `run(requests)`, the package's decoding defaults, image loading, `ask` and `ask_batch`."""

from __future__ import annotations

import numpy as np

from moai_edge.engines.decoding import DecodingConfig
from moai_edge.engines.errors import InputError
from moai_edge.engines.manifest import Manifest

from .contracts import AuxInputs, OnToken, ShouldStop
from .images import load_resized
from .request import Request, Result


class Asking:
    manifest: Manifest

    def run(self, requests: list[Request], *, on_token: OnToken | None = None,
            should_stop: ShouldStop | None = None) -> list[Result]:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        raise NotImplementedError

    def decoding(self, decoding: DecodingConfig | str | None = None, *, max_new_tokens: int | None = None,
                 seed: int | None = None) -> DecodingConfig:
        """The package's generation defaults, or `decoding` (a config or a strategy name), with the given changes."""
        cfg = decoding if isinstance(decoding, DecodingConfig) else self.manifest.generation
        changes = {k: v for k, v in (("strategy", decoding if isinstance(decoding, str) else None),
                                     ("max_new_tokens", max_new_tokens), ("seed", seed)) if v is not None}
        return cfg.replace(**changes) if changes else cfg

    def expert_input(self, image) -> np.ndarray:
        """The one decode and resize of an image: RGB uint8 at the vision input size, what the experts and the vision
        tower both see (the reference gives its experts the 490x490 image too)."""
        return load_resized(image, self.manifest.preprocess.image_size)

    def ask(self, image, question: str, *, decoding: DecodingConfig | str | None = None,
            max_new_tokens: int | None = None, seed: int | None = None, template: str | None = None,
            aux: AuxInputs | None = None, on_token: OnToken | None = None) -> Result:
        """`aux`: expert-derived inputs of your own instead of running the experts (AuxInputs() = nothing detected)."""
        return self.ask_batch([image], [question], decoding=decoding, max_new_tokens=max_new_tokens, seed=seed,
                              template=template, aux=None if aux is None else [aux], on_token=on_token)[0]

    def ask_batch(self, images: list, questions: list[str], *, decoding: DecodingConfig | str | None = None,
                  max_new_tokens: int | None = None, seed: int | None = None, template: str | None = None,
                  aux: list[AuxInputs] | None = None, on_token: OnToken | None = None) -> list[Result]:
        if len(images) != len(questions) or (aux is not None and len(aux) != len(images)):
            raise InputError(f"{len(images)} images, {len(questions)} questions"
                             f"{'' if aux is None else f', {len(aux)} aux inputs'}: expected one of each per image")
        cfg = self.decoding(decoding, max_new_tokens=max_new_tokens, seed=seed)
        aux = aux or [None] * len(images)
        return self.run([Request(img, q, cfg, template=template, aux=a) for img, q, a in zip(images, questions, aux)],
                        on_token=on_token)
