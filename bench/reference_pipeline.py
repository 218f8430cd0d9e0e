"""The PyTorch reference pipeline for one image: the parity oracle of the runtime.

It follows the reference repositories' own steps: torchvision resize of the uint8 image, the
0-255 normalisation, prompt and im_mask built from separate tokenizations, LLaVA-style merge of
the image features, Hugging Face generate semantics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from moai_edge.runtime.experts.verbalize import EMPTY_VERBALIZATION, collavo_question
from moai_edge.runtime.generation import DecodingConfig
from moai_edge.runtime.model import AuxInputs, Timer

from moai_edge.export.config import CLIP_MEAN, CLIP_STD, REFERENCE_PROMPTS
from moai_edge.export.modeling.vlm import VLM
from moai_edge.export.reference_prompt import ReferenceTokenizer, build_reference_inputs

from .reference_generate import generate


def reference_pixels(image: np.ndarray, size: int) -> torch.Tensor:
    """uint8 HxWx3 -> (1,3,S,S): torchvision Resize(antialias=False) on the uint8 tensor, then 0-255 normalisation."""
    from torchvision.transforms import Resize

    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    t = Resize(size=(size, size), antialias=False)(t)[:3]
    return normalise(t[None].float())


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN).view(1, -1, 1, 1) * 255
    std = torch.tensor(CLIP_STD).view(1, -1, 1, 1) * 255
    return (x - mean) / std


class ReferencePipeline:
    def __init__(self, model: VLM, tokenizer_file: Path, *, template: str = "eval"):
        self.model = model.eval()
        self.tokenizer = ReferenceTokenizer(Path(tokenizer_file), REFERENCE_PROMPTS["image_token"])
        self.template = template

    @torch.no_grad()
    def ask(self, image: np.ndarray, question: str, *, aux: AuxInputs | None = None,
            decoding: DecodingConfig = DecodingConfig(), timer: Timer | None = None) -> list[int]:
        """`timer` (optional) gets the stages the runtime reports: vision, aux, prefill, decode."""
        m, cfg = self.model, self.model.cfg
        aux = aux or AuxInputs()
        timer = timer or Timer()
        with timer("vision"):  # MoAI's colour map goes through the same tower: timed here, as in the runtime
            image_features = m.encode_image(reference_pixels(image, cfg.vision.image_size))
            maps = self.colour_map_features(aux) if cfg.family == "moai" else None
        extra = {}
        with timer("aux"):
            if cfg.family == "collavo":
                g = cfg.vision.grid
                cls = torch.as_tensor(aux.class_map if aux.class_map is not None else np.zeros((g, g)), dtype=torch.long)
                num = torch.as_tensor(aux.number_map if aux.number_map is not None else np.zeros((g, g)), dtype=torch.long)
                seg = m.crayon_features(cls.reshape(1, -1), num.reshape(1, -1))
                question = collavo_question(aux.segment_text, question)
            else:
                extra["aux_tokens"] = self.aux_tokens(aux, maps)
        inputs = build_reference_inputs(question, self.tokenizer, m.embed, image_features,
                                        prompts=REFERENCE_PROMPTS, template=self.template)
        if cfg.family == "collavo":
            seq = torch.zeros_like(inputs.embeds)
            seq[inputs.im_mask] = seg.reshape(-1, seg.shape[-1])
            extra["seg_features"] = seq
        with timer("prefill"):
            logits, kv = m.prefill(inputs.embeds, inputs.attention_mask, inputs.position_ids, inputs.im_mask, **extra)
        state = {"kv": kv, "mask": inputs.attention_mask, "pos": inputs.attention_mask.sum(-1, keepdim=True)}

        def step(tokens: torch.Tensor) -> torch.Tensor:
            state["mask"] = torch.cat([state["mask"], torch.ones_like(state["mask"][:, :1])], dim=1)
            out, new = m.decode_step(m.embed(tokens)[:, None], state["mask"], state["pos"], state["kv"])
            state["kv"] = [(torch.cat([k, nk], 2), torch.cat([v, nv], 2)) for (k, v), (nk, nv) in zip(state["kv"], new)]
            state["pos"] = state["pos"] + 1
            return out

        def select_rows(index: torch.Tensor) -> None:
            state["kv"] = [(k[index], v[index]) for k, v in state["kv"]]
            state["mask"], state["pos"] = state["mask"][index], state["pos"][index]

        with timer("decode"):
            tokens = generate(logits, step, select_rows, decoding)[0]
        timer.ms["decode_per_token"] = timer.ms["decode"] / max(1, len(tokens) - 1)
        return tokens

    def colour_map_features(self, aux: AuxInputs) -> torch.Tensor:
        """MoAI: the colour map through CLIP + projector, fed as fp16 like the reference."""
        m, size = self.model, self.model.cfg.vision.image_size
        cmap = aux.colour_map if aux.colour_map is not None else np.zeros((size, size, 3), np.float32)
        cmap = torch.from_numpy(np.asarray(cmap, np.float32)).permute(2, 0, 1)[None].half()
        return m.encode_image(normalise(cmap.float()))

    def aux_tokens(self, aux: AuxInputs, maps: torch.Tensor) -> torch.Tensor:
        """MoAI: verbalized text embedded with BOS ++ the colour-map features, compressed."""
        text = aux.verbalized if aux.verbalized is not None else EMPTY_VERBALIZATION
        verb = self.model.embed(torch.tensor([self.tokenizer(text)]))  # BOS first
        return self.model.compress(torch.cat([verb, maps], dim=1))
