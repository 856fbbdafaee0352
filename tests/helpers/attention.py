"""An explicit loop-by-loop float64 reference of ``asr.nn.attention.RelPositionMultiheadAttention``: heads,
query groups and key groups one at a time, the positional encoding one scalar at a time."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from asr.nn.attention import RelPositionMultiheadAttention


def sinusoid(p: int, dim: int) -> torch.Tensor:
    """Channel 2k = sin(p / 10000^(2k/dim)), 2k+1 = cos(...), one scalar at a time."""
    out = torch.zeros(dim, dtype=torch.float64)
    for k in range(dim // 2):
        angle = p / 10000 ** (2 * k / dim)
        out[2 * k], out[2 * k + 1] = math.sin(angle), math.cos(angle)
    return out


def reference_attention(
    att: RelPositionMultiheadAttention,
    x: torch.Tensor,
    length: int,
    visible: Callable[[int, int], bool] | None = None,
) -> torch.Tensor:
    """One utterance ``x`` (T, D) of which the first ``length`` frames are valid, computed with explicit
    loops over heads, query groups and key groups, in float64. ``visible(i, j)`` restricts frame pairs.
    Returns float64 (T', D): T' = ceil(T / query_stride) without grouping, else T."""
    G, S, H, D = att.group_size, att.query_stride, att.num_heads, att.embed_dim
    sd = {k: v.double() for k, v in att.state_dict().items()}
    x = x.double()
    T = x.size(0)

    def lin(name, t):
        out = t @ sd[f"{name}.weight"].T
        return out + sd[f"{name}.bias"] if f"{name}.bias" in sd else out

    q, k, v = lin("linear_q", x), lin("linear_k", x), lin("linear_v", x)
    q[length:] = 0.0
    k[length:] = 0.0
    v[length:] = 0.0
    num_groups = -(-T // G)
    pad = num_groups * G - T
    q, k, v = (torch.cat([t, torch.zeros(pad, D, dtype=t.dtype)]) for t in (q, k, v))
    u, vb = sd["pos_bias_u"].flatten(), sd["pos_bias_v"].flatten()
    d = G * D // H

    def group(t, i):  # frames G*i .. G*i+G-1 concatenated
        return torch.cat([t[G * i + m] for m in range(G)])

    def pos_group(offset):
        frames = [sd["linear_pos.weight"] @ sinusoid(G * offset + G // 2 - m, D) for m in range(G)]
        return torch.cat(frames)

    query_groups = list(range(0, num_groups, S))
    out = torch.zeros(len(query_groups) * G, D, dtype=torch.float64)
    for qi, i in enumerate(query_groups):
        qu, qv = group(q, i) + u.repeat(G), group(q, i) + vb.repeat(G)
        result = torch.zeros(G * D, dtype=torch.float64)
        for h in range(H):
            sl = slice(h * d, (h + 1) * d)
            scores, values = [], []
            for j in range(num_groups):
                if G * j >= length or (visible is not None and not visible(G * i, G * j)):
                    continue
                s = qu[sl] @ group(k, j)[sl] + qv[sl] @ pos_group(i - j)[sl]
                scores.append(s / math.sqrt(d))
                values.append(group(v, j)[sl])
            w = torch.softmax(torch.stack(scores), dim=0)
            result[sl] = sum(wi * vi for wi, vi in zip(w, values))
        out[qi * G : (qi + 1) * G] = result.reshape(G, D)
    out = out[: len(range(0, T, S))] if G == 1 else out[:T]
    return lin("linear_out", out)
