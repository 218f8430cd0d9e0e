"""A literal transcription of the reference repositories' prefill (boolean indexing, per-row mixer loop,
cached RoPE table indexed by arange, HF-style causal mask), used to check that our export-friendly
rewrite (masked branches, masked attention) computes the same thing. Batch 1, no padding."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def plora(lin, x, im_mask, seg=None):
    res = lin.Plora_main(x)
    part = lin.Plora_B(lin.Plora_A(x[im_mask])) * lin.scaling
    if seg is not None:
        part = part + lin.Plora_seg_B(lin.Plora_seg_A(seg.reshape(-1, seg.shape[-1]))) * lin.scaling
    res[im_mask] += part
    return res


def lora_attention(mod, q, k, v):
    """MultiHeadLoRAAttention.forward on 2-D (seq, dim) inputs."""
    _q, _k, _v = F.gelu(mod.linear_q(q)), F.gelu(mod.linear_k(k)), F.gelu(mod.linear_v(v))

    def to_batches(x):
        return x.reshape(x.shape[0], mod.heads, x.shape[1] // mod.heads).permute(1, 0, 2)

    _q, _k, _v = map(to_batches, (_q, _k, _v))
    scores = _q.matmul(_k.transpose(-2, -1)) / math.sqrt(_q.shape[-1])
    y = F.softmax(scores, dim=-1).matmul(_v)
    y = y.permute(1, 0, 2).reshape(y.shape[1], -1)
    return q + F.gelu(mod.linear_o(y))


def gate(linear, h_part):
    """The gating network of moai_eval.yaml: the softmax's dtype is float16."""
    return F.softmax(linear(h_part), dim=1, dtype=torch.float16)


def mixer(att, h, aux, im_mask, lang_mask):
    for b in range(h.shape[0]):
        h_im, h_lang = h[b][im_mask[b]], h[b][lang_mask[b]]
        w_img, w_lang = gate(att.moai_GA_img, h_im), gate(att.moai_GA_lang, h_lang)
        mix_img = (w_img[..., 0:1] * lora_attention(att.moai_CA_img_aux, h_im, aux[b], aux[b])
                   + w_img[..., 1:2] * lora_attention(att.moai_CA_img_lang, h_im, h_lang, h_lang)
                   + w_img[..., 2:3] * lora_attention(att.moai_SA_img, h_im, h_im, h_im))
        mix_lang = (w_lang[..., 0:1] * lora_attention(att.moai_CA_lang_aux, h_lang, aux[b], aux[b])
                    + w_lang[..., 1:2] * lora_attention(att.moai_CA_lang_img, h_lang, h_im, h_im)
                    + w_lang[..., 2:3] * lora_attention(att.moai_SA_lang, h_lang, h_lang, h_lang))
        h[b][im_mask[b]] = mix_img
        h[b][lang_mask[b]] = mix_lang
    return h


def rope_table(inv_freq, seq_len):
    t = torch.arange(seq_len, dtype=inv_freq.dtype)
    freqs = torch.einsum("i,j->ij", t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    return torch.cat((-x[..., x.shape[-1] // 2:], x[..., : x.shape[-1] // 2]), dim=-1)


def attention(att, h, im_mask, seg, inv_freq):
    b, q_len, _ = h.shape
    heads, kvh, hd = att.num_heads, att.num_kv, att.head_dim
    gs = heads // kvh
    qkv = plora(att.wqkv, h, im_mask, seg).view(b, q_len, kvh, gs + 2, hd)
    q = qkv[..., :gs, :].reshape(b, q_len, heads, hd).transpose(1, 2)
    k, v = qkv[..., -2, :].transpose(1, 2), qkv[..., -1, :].transpose(1, 2)
    cos, sin = rope_table(inv_freq, q_len)
    q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    k, v = k.repeat_interleave(gs, dim=1), v.repeat_interleave(gs, dim=1)
    w = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(hd)
    mask = torch.full((q_len, q_len), torch.finfo(h.dtype).min)
    cond = torch.arange(q_len)
    mask.masked_fill_(cond < (cond + 1).view(q_len, 1), 0)
    w = F.softmax(w + mask, dim=-1, dtype=torch.float32)
    out = torch.matmul(w, v).transpose(1, 2).reshape(b, q_len, -1)
    return plora(att.wo, out, im_mask, seg)


@torch.no_grad()
def literal_prefill(vlm, embeds, im_mask, *, seg=None, aux=None):
    """embeds (1,L,H); im_mask (1,L) bool; seg (1,N,H) CoLLaVO; aux (1,A,H) MoAI -> last logits (1,V)."""
    x = embeds.clone()
    lang_mask = ~im_mask
    for layer in vlm.model.layers:
        att = layer.attention
        h = layer.attention_norm(x)
        if att.with_mixer and aux is not None:
            h = mixer(att, h, aux, im_mask, lang_mask)
        x = x + attention(att, h, im_mask, seg, vlm.model.inv_freq)
        h = layer.ffn_norm(x)
        ff = layer.feed_forward
        x = x + plora(ff.w2, F.silu(plora(ff.w1, h, im_mask, seg)) * plora(ff.w3, h, im_mask, seg), im_mask)
    return vlm.output(vlm.model.norm(x))[:, -1]
