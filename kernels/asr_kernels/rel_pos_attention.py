"""Fused relative-position attention in Triton (FlashAttention-style), forward and backward.

Semantics, layouts and masks are those of :mod:`asr_kernels.reference` (head-first ``(H, N, T, D)``;
scores ``scale * q.k + q_pos . pos_table[j - i + T_q - 1] + key_bias``, chunked limited-context mask).

Two entry points, each an ``autograd.Function``:

* :func:`rel_pos_attention` -> ``softmax(scores) @ v`` ``(H, N, T_q, D_v)``. Online softmax over key
  blocks; neither the ``(T_q, T_k)`` scores nor the ``(T_q, T_k)`` positional bias ever exist in memory:
  the positional term is computed per tile from the ``(H, T_q + T_k - 1, P)`` table (see below). It keeps
  the per-row log-sum-exp ``(H, N, T_q)`` for the backward, which recomputes the scores tile by tile.
* :func:`rel_pos_attention_weights` -> the weights ``(H, N, T_q, T_k)`` for consumers that need them
  (Zipformer's NonlinAttention, which uses one head). Two passes: the forward kernel without values
  gives the log-sum-exp, then one program per tile writes ``exp(s - lse)``.

Memory trade-off (Zipformer): a layer uses the same weights three times. We materialise them only for
NonlinAttention, and only for the head it uses (``(1, N, T, T)`` instead of ``(H, N, T, T)``); the two
SelfAttention modules call :func:`rel_pos_attention`, which recomputes the scores from ``q``, ``k``,
``q_pos`` and the table instead of reading stored weights. Recomputing costs two extra ``T^2 (D + P)``
score passes per layer (plus their recomputation in the backward), but the activation memory of
attention drops from ``O(H T^2)`` to ``O(H T)`` per self-attention module, which is what bounds the
batch size at long ``T``.

The positional term of a ``(BLOCK_M, BLOCK_N)`` tile takes one of two paths, chosen by ``P``:

* narrow (``P < 16``, Zipformer's ``P = 4``): ``P`` gathered loads of one table column per tile, each
  a ``(BLOCK_M, BLOCK_N)`` load at the tile's diagonal addresses, multiplied into the scores. Cost per
  score: ``P`` loads and ``P`` multiply-adds, no ``tl.dot``.
* wide (``P >= 16``: the full-width term of the Conformer, ``P`` = head dim, 32 .. 135): the tile only
  touches the ``BLOCK_M + BLOCK_N - 1`` consecutive table rows ``j0 - i0 - (BLOCK_M - 1) + T_q - 1 + w``.
  That window is loaded once (padded to ``DIAG``, the next power of two, and ``P`` to a power of two
  >= 16), ``q_pos_tile @ window^T`` gives ``(BLOCK_M, DIAG)`` with one ``tl.dot``, and ``tl.gather``
  along the rows skews it into the tile: score ``(m, n)`` takes window column ``n - m + BLOCK_M - 1``.
  Time: one ``BLOCK_M x DIAG x P`` dot per tile, ``DIAG / BLOCK_N`` (2 with square tiles, hence the
  default square tiles) times the ``q . k`` dot at ``P = D``, plus a register shuffle; ``P`` loads per
  score would be far slower. Memory: a ``(DIAG, P)`` window and a ``(BLOCK_M, DIAG)`` float32 product
  per program instead of one ``(BLOCK_M, BLOCK_N)`` column; nothing of size ``T^2``.

Backward: ``delta = rowsum(dO * O)`` (or ``rowsum(dW * W)`` for the weights), then two kernels: one per key
block (``dk``, ``dv``) and one per query block (``dq``, ``dq_pos`` and the table gradient). The table
gradient sums ``ds * q_pos`` along diagonals of each tile: ``tl.gather`` skews ``ds`` so that each
diagonal becomes a column (the reverse of the wide forward's skew). Narrow path: per column of ``q_pos``,
the skewed ``ds * q_pos[:, c]`` is summed over the rows, one atomic add per table row and tile. Wide path:
the skewed ``ds_win`` ``(BLOCK_M, DIAG)`` gives ``dq_pos += ds_win @ window`` and the window's gradient
``ds_win^T @ q_pos_tile`` ``(DIAG, P)``, one atomic add per table element and tile. Both land in a
float32 buffer.

Chunk masks skip key blocks (forward, ``dq``) and query blocks (``dk``/``dv``) that are fully masked,
and the weights kernel writes zeros there without computing scores. Head dims that are not powers of
two (12, 90, 135) are padded to the next power of two (at least 16, for ``tl.dot``) with masked loads.
float32 inputs use IEEE float32 dots (no TF32); float16 / bfloat16 inputs use tensor-core dots with
float32 accumulation (the wide path casts ``q_pos`` and the table to ``q``'s dtype for its dots).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.errors import OutOfResources

__all__ = ["rel_pos_attention", "rel_pos_attention_weights"]

# Running-max start value: finite, so a tile of -inf scores gives exp(-inf - m) = 0 rather than NaN.
_NEG_INIT = tl.constexpr(-1.0e30)
# Sizes and mask parameters vary per call; specialising on them (e.g. LEFT == 1) buys nothing.
_RUNTIME_SCALARS = ["N", "T_Q", "T_K", "CHUNK", "LEFT"]


@triton.jit
def _mm(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _key_range(i0, T_Q, T_K, CHUNK, LEFT, HAS_CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Keys ``[lo, hi)`` that queries ``i0 .. i0 + BLOCK_M - 1`` can see; ``lo`` block aligned."""
    lo = 0
    hi = T_K
    if HAS_CHUNK:
        shift = T_K - T_Q
        first = i0 + shift
        last = tl.minimum(i0 + BLOCK_M, T_Q) - 1 + shift
        hi = tl.minimum(T_K, (last // CHUNK + 1) * CHUNK)
        lo = tl.where(LEFT >= 0, tl.maximum(0, (first // CHUNK - LEFT) * CHUNK), 0)
        lo = (lo // BLOCK_N) * BLOCK_N
    return lo, hi


@triton.jit
def _query_range(j0, T_Q, T_K, CHUNK, LEFT, HAS_CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Queries ``[lo, hi)`` that can see some key of ``j0 .. j0 + BLOCK_N - 1``; ``lo`` block aligned."""
    lo = 0
    hi = T_Q
    if HAS_CHUNK:
        shift = T_K - T_Q
        last = tl.minimum(j0 + BLOCK_N, T_K) - 1
        lo = tl.maximum(0, (j0 // CHUNK) * CHUNK - shift)
        hi = tl.where(LEFT >= 0, tl.minimum(T_Q, (last // CHUNK + LEFT + 1) * CHUNK - shift), T_Q)
        lo = (lo // BLOCK_M) * BLOCK_M
    return lo, hi


@triton.jit
def _pos_queries(QP, sqp_t, offs_m, T_Q, P: tl.constexpr, P_PAD: tl.constexpr, dtype: tl.constexpr):
    """The ``q_pos`` rows ``offs_m`` as a ``(BLOCK_M, P_PAD)`` tile in ``dtype`` (zeros past ``T_Q`` and ``P``)."""
    offs_p = tl.arange(0, P_PAD)
    tile = tl.load(
        QP + offs_m[:, None] * sqp_t + offs_p[None, :], mask=(offs_m[:, None] < T_Q) & (offs_p[None, :] < P), other=0.0
    )
    return tile.to(dtype)


@triton.jit
def _table_window(
    TAB,
    stab_r,
    stab_c,
    i0,
    j0,
    T_Q,
    T_K,
    P: tl.constexpr,
    P_PAD: tl.constexpr,
    DIAG: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The table rows the tile at ``(i0, j0)`` uses: window row ``w`` is table row
    ``w + j0 - i0 - (BLOCK_M - 1) + T_Q - 1`` (score ``(i0 + m, j0 + n)`` needs ``w = n - m + BLOCK_M - 1``).
    Returns the ``(DIAG, P_PAD)`` window (zeros past the ``BLOCK_M + BLOCK_N - 1`` used rows, outside the
    table and past ``P``), its table row numbers ``(DIAG,)`` and which of them are real. The rows past
    ``BLOCK_M + BLOCK_N - 1`` are never used (the skews leave them out); masking them saves loads and atomics."""
    w = tl.arange(0, DIAG)
    rows = w + (j0 - i0 - (BLOCK_M - 1) + T_Q - 1)
    rows_ok = (w < BLOCK_M + BLOCK_N - 1) & (rows >= 0) & (rows < T_Q + T_K - 1)
    offs_p = tl.arange(0, P_PAD)
    window = tl.load(
        TAB + rows[:, None] * stab_r + offs_p[None, :] * stab_c,
        mask=rows_ok[:, None] & (offs_p[None, :] < P),
        other=0.0,
    )
    return window, rows, rows_ok


@triton.jit
def _scores(
    q,
    k,
    qp,
    i0,
    j0,
    QP,
    sqp_t,
    TAB,
    stab_r,
    stab_c,
    KB,
    skb_t,
    T_Q,
    T_K,
    scale,
    CHUNK,
    LEFT,
    P: tl.constexpr,
    P_PAD: tl.constexpr,
    DIAG: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_POS: tl.constexpr,
    WIDE_POS: tl.constexpr,
    HAS_KB: tl.constexpr,
    HAS_CHUNK: tl.constexpr,
    IEEE: tl.constexpr,
):
    """Scores ``(BLOCK_M, BLOCK_N)`` in float32 of query rows ``i0 ..`` against key rows ``j0 ..``
    (``q``, ``k`` and, for the wide positional path, the ``q_pos`` tile ``qp`` already loaded),
    ``-inf`` where masked or out of range."""
    offs_m = i0 + tl.arange(0, BLOCK_M)
    offs_n = j0 + tl.arange(0, BLOCK_N)
    s = _mm(q, tl.trans(k), IEEE) * scale
    row_ok = offs_m < T_Q
    col_ok = offs_n < T_K
    valid = row_ok[:, None] & col_ok[None, :]
    if HAS_POS:
        if WIDE_POS:
            window, _, _ = _table_window(TAB, stab_r, stab_c, i0, j0, T_Q, T_K, P, P_PAD, DIAG, BLOCK_M, BLOCK_N)
            pos = _mm(qp, tl.trans(window.to(qp.dtype)), IEEE)  # (BLOCK_M, DIAG): row m against window row w
            diagonal = tl.arange(0, BLOCK_N)[None, :] - tl.arange(0, BLOCK_M)[:, None] + (BLOCK_M - 1)
            s += tl.gather(pos, diagonal, axis=1)
        else:
            rows = offs_n[None, :] - offs_m[:, None] + (T_Q - 1)
            for c in tl.static_range(P):
                qp_c = tl.load(QP + offs_m * sqp_t + c, mask=row_ok, other=0.0).to(tl.float32)
                tab_c = tl.load(TAB + rows * stab_r + c * stab_c, mask=valid, other=0.0).to(tl.float32)
                s += qp_c[:, None] * tab_c
    if HAS_KB:
        s += tl.load(KB + offs_n * skb_t, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_CHUNK:
        query_chunk = (offs_m + (T_K - T_Q)) // CHUNK
        key_chunk = offs_n // CHUNK
        visible = key_chunk[None, :] <= query_chunk[:, None]
        visible = visible & ((LEFT < 0) | (key_chunk[None, :] >= query_chunk[:, None] - LEFT))
        valid = valid & visible
    return tl.where(valid, s, float("-inf"))


@triton.jit(do_not_specialize=_RUNTIME_SCALARS)
def _fwd_kernel(
    Q,
    K,
    V,
    QP,
    TAB,
    KB,
    OUT,
    LSE,
    sq_h,
    sq_n,
    sq_t,
    sk_h,
    sk_n,
    sk_t,
    sv_h,
    sv_n,
    sv_t,
    sqp_h,
    sqp_n,
    sqp_t,
    stab_h,
    stab_r,
    stab_c,
    skb_n,
    skb_t,
    so_h,
    so_n,
    so_t,
    N,
    T_Q,
    T_K,
    scale,
    CHUNK,
    LEFT,
    D: tl.constexpr,
    DV: tl.constexpr,
    P: tl.constexpr,
    D_PAD: tl.constexpr,
    DV_PAD: tl.constexpr,
    P_PAD: tl.constexpr,
    DIAG: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_V: tl.constexpr,
    HAS_POS: tl.constexpr,
    WIDE_POS: tl.constexpr,
    HAS_KB: tl.constexpr,
    HAS_CHUNK: tl.constexpr,
    IEEE: tl.constexpr,
):
    """One program per (query block, head * batch): online softmax over the visible key blocks; writes
    the log-sum-exp (``+inf`` for rows that see nothing) and, with ``HAS_V``, the output."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    h = (pid_bh // N).to(tl.int64)
    n = (pid_bh % N).to(tl.int64)
    Q += h * sq_h + n * sq_n
    K += h * sk_h + n * sk_n
    V += h * sv_h + n * sv_n
    QP += h * sqp_h + n * sqp_n
    TAB += h * stab_h
    KB += n * skb_n
    OUT += h * so_h + n * so_n

    i0 = pid_m * BLOCK_M
    offs_m = i0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    q = tl.load(
        Q + offs_m[:, None] * sq_t + offs_d[None, :], mask=(offs_m[:, None] < T_Q) & (offs_d[None, :] < D), other=0.0
    )
    qp = q  # the q_pos tile, loaded only for the wide positional path
    if HAS_POS and WIDE_POS:
        qp = _pos_queries(QP, sqp_t, offs_m, T_Q, P, P_PAD, q.dtype)
    m_i = tl.full([BLOCK_M], _NEG_INIT, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DV_PAD], tl.float32)

    lo, hi = _key_range(i0, T_Q, T_K, CHUNK, LEFT, HAS_CHUNK, BLOCK_M, BLOCK_N)
    for j0 in range(lo, hi, BLOCK_N):
        offs_n = j0 + tl.arange(0, BLOCK_N)
        k = tl.load(
            K + offs_n[:, None] * sk_t + offs_d[None, :],
            mask=(offs_n[:, None] < T_K) & (offs_d[None, :] < D),
            other=0.0,
        )
        s = _scores(
            q,
            k,
            qp,
            i0,
            j0,
            QP,
            sqp_t,
            TAB,
            stab_r,
            stab_c,
            KB,
            skb_t,
            T_Q,
            T_K,
            scale,
            CHUNK,
            LEFT,
            P,
            P_PAD,
            DIAG,
            BLOCK_M,
            BLOCK_N,
            HAS_POS,
            WIDE_POS,
            HAS_KB,
            HAS_CHUNK,
            IEEE,
        )
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if HAS_V:
            v = tl.load(
                V + offs_n[:, None] * sv_t + offs_dv[None, :],
                mask=(offs_n[:, None] < T_K) & (offs_dv[None, :] < DV),
                other=0.0,
            )
            acc = acc * alpha[:, None] + _mm(p.to(v.dtype), v, IEEE)
        m_i = m_new

    seen = l_i > 0.0
    lse = tl.where(seen, m_i + tl.log(tl.where(seen, l_i, 1.0)), float("inf"))
    tl.store(LSE + pid_bh * T_Q + offs_m, lse, mask=offs_m < T_Q)
    if HAS_V:
        out = acc / tl.where(seen, l_i, 1.0)[:, None]
        tl.store(
            OUT + offs_m[:, None] * so_t + offs_dv[None, :],
            out.to(OUT.dtype.element_ty),
            mask=(offs_m[:, None] < T_Q) & (offs_dv[None, :] < DV),
        )


@triton.jit(do_not_specialize=_RUNTIME_SCALARS + ["NUM_KEY_BLOCKS"])
def _weights_kernel(
    Q,
    K,
    QP,
    TAB,
    KB,
    LSE,
    W,
    sq_h,
    sq_n,
    sq_t,
    sk_h,
    sk_n,
    sk_t,
    sqp_h,
    sqp_n,
    sqp_t,
    stab_h,
    stab_r,
    stab_c,
    skb_n,
    skb_t,
    sw_h,
    sw_n,
    sw_t,
    N,
    T_Q,
    T_K,
    scale,
    CHUNK,
    LEFT,
    NUM_KEY_BLOCKS,
    D: tl.constexpr,
    P: tl.constexpr,
    D_PAD: tl.constexpr,
    P_PAD: tl.constexpr,
    DIAG: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_POS: tl.constexpr,
    WIDE_POS: tl.constexpr,
    HAS_KB: tl.constexpr,
    HAS_CHUNK: tl.constexpr,
    IEEE: tl.constexpr,
):
    """One program per (tile, head * batch): weights ``exp(s - lse)``, zeros for fully masked tiles."""
    pid_tile = tl.program_id(0)
    pid_bh = tl.program_id(1)
    h = (pid_bh // N).to(tl.int64)
    n = (pid_bh % N).to(tl.int64)
    Q += h * sq_h + n * sq_n
    K += h * sk_h + n * sk_n
    QP += h * sqp_h + n * sqp_n
    TAB += h * stab_h
    KB += n * skb_n
    W += h * sw_h + n * sw_n

    i0 = (pid_tile // NUM_KEY_BLOCKS) * BLOCK_M
    j0 = (pid_tile % NUM_KEY_BLOCKS) * BLOCK_N
    offs_m = i0 + tl.arange(0, BLOCK_M)
    offs_n = j0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    w_ptrs = W + offs_m[:, None].to(tl.int64) * sw_t + offs_n[None, :]
    in_range = (offs_m[:, None] < T_Q) & (offs_n[None, :] < T_K)
    lo, hi = _key_range(i0, T_Q, T_K, CHUNK, LEFT, HAS_CHUNK, BLOCK_M, BLOCK_N)
    if (j0 + BLOCK_N <= lo) | (j0 >= hi):
        tl.store(w_ptrs, tl.zeros([BLOCK_M, BLOCK_N], W.dtype.element_ty), mask=in_range)
    else:
        q = tl.load(
            Q + offs_m[:, None] * sq_t + offs_d[None, :],
            mask=(offs_m[:, None] < T_Q) & (offs_d[None, :] < D),
            other=0.0,
        )
        k = tl.load(
            K + offs_n[:, None] * sk_t + offs_d[None, :],
            mask=(offs_n[:, None] < T_K) & (offs_d[None, :] < D),
            other=0.0,
        )
        qp = q
        if HAS_POS and WIDE_POS:
            qp = _pos_queries(QP, sqp_t, offs_m, T_Q, P, P_PAD, q.dtype)
        s = _scores(
            q,
            k,
            qp,
            i0,
            j0,
            QP,
            sqp_t,
            TAB,
            stab_r,
            stab_c,
            KB,
            skb_t,
            T_Q,
            T_K,
            scale,
            CHUNK,
            LEFT,
            P,
            P_PAD,
            DIAG,
            BLOCK_M,
            BLOCK_N,
            HAS_POS,
            WIDE_POS,
            HAS_KB,
            HAS_CHUNK,
            IEEE,
        )
        lse = tl.load(LSE + pid_bh * T_Q + offs_m, mask=offs_m < T_Q, other=float("inf"))
        tl.store(w_ptrs, tl.exp(s - lse[:, None]).to(W.dtype.element_ty), mask=in_range)


@triton.jit(do_not_specialize=_RUNTIME_SCALARS)
def _bwd_dkdv_kernel(
    Q,
    K,
    V,
    QP,
    TAB,
    KB,
    DO,
    DW,
    LSE,
    DELTA,
    DK,
    DVAL,
    sq_h,
    sq_n,
    sq_t,
    sk_h,
    sk_n,
    sk_t,
    sv_h,
    sv_n,
    sv_t,
    sqp_h,
    sqp_n,
    sqp_t,
    stab_h,
    stab_r,
    stab_c,
    skb_n,
    skb_t,
    sdo_h,
    sdo_n,
    sdo_t,
    sdw_h,
    sdw_n,
    sdw_t,
    sdk_h,
    sdk_n,
    sdk_t,
    sdv_h,
    sdv_n,
    sdv_t,
    N,
    T_Q,
    T_K,
    scale,
    CHUNK,
    LEFT,
    D: tl.constexpr,
    DV: tl.constexpr,
    P: tl.constexpr,
    D_PAD: tl.constexpr,
    DV_PAD: tl.constexpr,
    P_PAD: tl.constexpr,
    DIAG: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    FROM_WEIGHTS: tl.constexpr,
    HAS_POS: tl.constexpr,
    WIDE_POS: tl.constexpr,
    HAS_KB: tl.constexpr,
    HAS_CHUNK: tl.constexpr,
    IEEE: tl.constexpr,
):
    """One program per (key block, head * batch): ``dk`` (and ``dv`` unless ``FROM_WEIGHTS``) over the
    query blocks that see the key block. ``FROM_WEIGHTS``: the weights' gradient ``DW`` replaces ``dO v^T``."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    h = (pid_bh // N).to(tl.int64)
    n = (pid_bh % N).to(tl.int64)
    Q += h * sq_h + n * sq_n
    K += h * sk_h + n * sk_n
    V += h * sv_h + n * sv_n
    QP += h * sqp_h + n * sqp_n
    TAB += h * stab_h
    KB += n * skb_n
    DO += h * sdo_h + n * sdo_n
    DW += h * sdw_h + n * sdw_n
    DK += h * sdk_h + n * sdk_n
    DVAL += h * sdv_h + n * sdv_n

    j0 = pid_n * BLOCK_N
    offs_n = j0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    key_mask = offs_n[:, None] < T_K
    k = tl.load(K + offs_n[:, None] * sk_t + offs_d[None, :], mask=key_mask & (offs_d[None, :] < D), other=0.0)
    if not FROM_WEIGHTS:
        v = tl.load(V + offs_n[:, None] * sv_t + offs_dv[None, :], mask=key_mask & (offs_dv[None, :] < DV), other=0.0)
    dk = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, DV_PAD], tl.float32)

    lo, hi = _query_range(j0, T_Q, T_K, CHUNK, LEFT, HAS_CHUNK, BLOCK_M, BLOCK_N)
    for i0 in range(lo, hi, BLOCK_M):
        offs_m = i0 + tl.arange(0, BLOCK_M)
        row_mask = offs_m < T_Q
        q = tl.load(
            Q + offs_m[:, None] * sq_t + offs_d[None, :], mask=row_mask[:, None] & (offs_d[None, :] < D), other=0.0
        )
        qp = q
        if HAS_POS and WIDE_POS:
            qp = _pos_queries(QP, sqp_t, offs_m, T_Q, P, P_PAD, q.dtype)
        s = _scores(
            q,
            k,
            qp,
            i0,
            j0,
            QP,
            sqp_t,
            TAB,
            stab_r,
            stab_c,
            KB,
            skb_t,
            T_Q,
            T_K,
            scale,
            CHUNK,
            LEFT,
            P,
            P_PAD,
            DIAG,
            BLOCK_M,
            BLOCK_N,
            HAS_POS,
            WIDE_POS,
            HAS_KB,
            HAS_CHUNK,
            IEEE,
        )
        lse = tl.load(LSE + pid_bh * T_Q + offs_m, mask=row_mask, other=float("inf"))
        delta = tl.load(DELTA + pid_bh * T_Q + offs_m, mask=row_mask, other=0.0)
        p = tl.exp(s - lse[:, None])
        if FROM_WEIGHTS:
            dp = tl.load(
                DW + offs_m[:, None].to(tl.int64) * sdw_t + offs_n[None, :],
                mask=row_mask[:, None] & (offs_n[None, :] < T_K),
                other=0.0,
            ).to(tl.float32)
        else:
            do = tl.load(
                DO + offs_m[:, None] * sdo_t + offs_dv[None, :],
                mask=row_mask[:, None] & (offs_dv[None, :] < DV),
                other=0.0,
            )
            dv += _mm(tl.trans(p.to(do.dtype)), do, IEEE)
            dp = _mm(do, tl.trans(v), IEEE)
        ds = p * (dp - delta[:, None])
        dk += _mm(tl.trans(ds.to(q.dtype)), q, IEEE)

    tl.store(
        DK + offs_n[:, None] * sdk_t + offs_d[None, :],
        (dk * scale).to(DK.dtype.element_ty),
        mask=key_mask & (offs_d[None, :] < D),
    )
    if not FROM_WEIGHTS:
        tl.store(
            DVAL + offs_n[:, None] * sdv_t + offs_dv[None, :],
            dv.to(DVAL.dtype.element_ty),
            mask=key_mask & (offs_dv[None, :] < DV),
        )


@triton.jit(do_not_specialize=_RUNTIME_SCALARS)
def _bwd_dq_kernel(
    Q,
    K,
    V,
    QP,
    TAB,
    KB,
    DO,
    DW,
    LSE,
    DELTA,
    DQ,
    DQP,
    DTAB,
    sq_h,
    sq_n,
    sq_t,
    sk_h,
    sk_n,
    sk_t,
    sv_h,
    sv_n,
    sv_t,
    sqp_h,
    sqp_n,
    sqp_t,
    stab_h,
    stab_r,
    stab_c,
    skb_n,
    skb_t,
    sdo_h,
    sdo_n,
    sdo_t,
    sdw_h,
    sdw_n,
    sdw_t,
    sdq_h,
    sdq_n,
    sdq_t,
    sdqp_h,
    sdqp_n,
    sdqp_t,
    sdtab_h,
    sdtab_r,
    N,
    T_Q,
    T_K,
    scale,
    CHUNK,
    LEFT,
    D: tl.constexpr,
    DV: tl.constexpr,
    P: tl.constexpr,
    D_PAD: tl.constexpr,
    DV_PAD: tl.constexpr,
    P_PAD: tl.constexpr,
    DIAG: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    FROM_WEIGHTS: tl.constexpr,
    HAS_POS: tl.constexpr,
    WIDE_POS: tl.constexpr,
    HAS_KB: tl.constexpr,
    HAS_CHUNK: tl.constexpr,
    IEEE: tl.constexpr,
):
    """One program per (query block, head * batch): ``dq``, ``dq_pos`` and atomic adds of the table
    gradient (float32 ``DTAB``) over the visible key blocks. ``DIAG`` >= BLOCK_M + BLOCK_N - 1."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    h = (pid_bh // N).to(tl.int64)
    n = (pid_bh % N).to(tl.int64)
    Q += h * sq_h + n * sq_n
    K += h * sk_h + n * sk_n
    V += h * sv_h + n * sv_n
    QP += h * sqp_h + n * sqp_n
    TAB += h * stab_h
    KB += n * skb_n
    DO += h * sdo_h + n * sdo_n
    DW += h * sdw_h + n * sdw_n
    DQ += h * sdq_h + n * sdq_n
    DQP += h * sdqp_h + n * sdqp_n
    DTAB += h * sdtab_h

    i0 = pid_m * BLOCK_M
    offs_m = i0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    offs_p = tl.arange(0, P_PAD)
    row_mask = offs_m < T_Q
    q = tl.load(Q + offs_m[:, None] * sq_t + offs_d[None, :], mask=row_mask[:, None] & (offs_d[None, :] < D), other=0.0)
    lse = tl.load(LSE + pid_bh * T_Q + offs_m, mask=row_mask, other=float("inf"))
    delta = tl.load(DELTA + pid_bh * T_Q + offs_m, mask=row_mask, other=0.0)
    if not FROM_WEIGHTS:
        do = tl.load(
            DO + offs_m[:, None] * sdo_t + offs_dv[None, :], mask=row_mask[:, None] & (offs_dv[None, :] < DV), other=0.0
        )
    qp = q
    if HAS_POS and WIDE_POS:
        qp = _pos_queries(QP, sqp_t, offs_m, T_Q, P, P_PAD, q.dtype)
    dq = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    dqp = tl.zeros([BLOCK_M, P_PAD], tl.float32)
    # Skewing a tile: output column d of row r holds tile column d + r - (BLOCK_M - 1), so that column d
    # collects one diagonal, i.e. one table row (row d of the tile's window, see _table_window).
    diag = tl.arange(0, DIAG)
    skew = diag[None, :] + tl.arange(0, BLOCK_M)[:, None] - (BLOCK_M - 1)
    skew_ok = (skew >= 0) & (skew < BLOCK_N)
    skew = tl.where(skew_ok, skew, 0)
    num_rows = T_Q + T_K - 1

    lo, hi = _key_range(i0, T_Q, T_K, CHUNK, LEFT, HAS_CHUNK, BLOCK_M, BLOCK_N)
    for j0 in range(lo, hi, BLOCK_N):
        offs_n = j0 + tl.arange(0, BLOCK_N)
        col_mask = offs_n < T_K
        k = tl.load(
            K + offs_n[:, None] * sk_t + offs_d[None, :], mask=col_mask[:, None] & (offs_d[None, :] < D), other=0.0
        )
        s = _scores(
            q,
            k,
            qp,
            i0,
            j0,
            QP,
            sqp_t,
            TAB,
            stab_r,
            stab_c,
            KB,
            skb_t,
            T_Q,
            T_K,
            scale,
            CHUNK,
            LEFT,
            P,
            P_PAD,
            DIAG,
            BLOCK_M,
            BLOCK_N,
            HAS_POS,
            WIDE_POS,
            HAS_KB,
            HAS_CHUNK,
            IEEE,
        )
        p = tl.exp(s - lse[:, None])
        if FROM_WEIGHTS:
            dp = tl.load(
                DW + offs_m[:, None].to(tl.int64) * sdw_t + offs_n[None, :],
                mask=row_mask[:, None] & col_mask[None, :],
                other=0.0,
            ).to(tl.float32)
        else:
            v = tl.load(
                V + offs_n[:, None] * sv_t + offs_dv[None, :],
                mask=col_mask[:, None] & (offs_dv[None, :] < DV),
                other=0.0,
            )
            dp = _mm(do, tl.trans(v), IEEE)
        ds = p * (dp - delta[:, None])
        dq += _mm(ds.to(k.dtype), k, IEEE)
        if HAS_POS and WIDE_POS:
            window, window_rows, window_ok = _table_window(
                TAB, stab_r, stab_c, i0, j0, T_Q, T_K, P, P_PAD, DIAG, BLOCK_M, BLOCK_N
            )
            ds_window = tl.where(skew_ok, tl.gather(ds, skew, axis=1), 0.0).to(qp.dtype)  # (BLOCK_M, DIAG)
            dqp += _mm(ds_window, window.to(qp.dtype), IEEE)
            dwindow = _mm(tl.trans(ds_window), qp, IEEE)  # (DIAG, P_PAD)
            tl.atomic_add(
                DTAB + window_rows[:, None] * sdtab_r + offs_p[None, :],
                dwindow,
                mask=window_ok[:, None] & (offs_p[None, :] < P),
            )
        elif HAS_POS:
            valid = row_mask[:, None] & col_mask[None, :]
            rows = offs_n[None, :] - offs_m[:, None] + (T_Q - 1)
            # Table row of skewed column d: j - i + T_Q - 1 with j - i = d - (BLOCK_M - 1) + j0 - i0.
            diag_rows = diag + (j0 - i0 - (BLOCK_M - 1) + T_Q - 1)
            diag_ok = (diag < BLOCK_M + BLOCK_N - 1) & (diag_rows >= 0) & (diag_rows < num_rows)
            for c in tl.static_range(P):
                tab_c = tl.load(TAB + rows * stab_r + c * stab_c, mask=valid, other=0.0).to(tl.float32)
                dqp += tl.where(offs_p[None, :] == c, tl.sum(ds * tab_c, axis=1)[:, None], 0.0)
                qp_c = tl.load(QP + offs_m * sqp_t + c, mask=row_mask, other=0.0).to(tl.float32)
                skewed = tl.gather(ds * qp_c[:, None], skew, axis=1)
                per_row = tl.sum(tl.where(skew_ok, skewed, 0.0), axis=0)
                tl.atomic_add(DTAB + diag_rows * sdtab_r + c, per_row, mask=diag_ok)

    tl.store(
        DQ + offs_m[:, None] * sdq_t + offs_d[None, :],
        (dq * scale).to(DQ.dtype.element_ty),
        mask=row_mask[:, None] & (offs_d[None, :] < D),
    )
    if HAS_POS:
        tl.store(
            DQP + offs_m[:, None] * sdqp_t + offs_p[None, :],
            dqp.to(DQP.dtype.element_ty),
            mask=row_mask[:, None] & (offs_p[None, :] < P),
        )


# ---------------------------------------------------------------------------------------------------
# Launchers


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _pad_dim(size: int) -> int:
    """Power of two >= size and >= 16 (the smallest ``tl.dot`` operand side)."""
    return max(16, triton.next_power_of_2(size))


# With 8 warps and these tiles every kernel compiles for sm_90 with float16 inputs without register
# spills (ptxas -v; head dims 32, 90, 135), except 32 bytes in the weights' dq kernel. 64 x 64 tiles
# at 4 warps spill in every kernel: the table gathers hold one 64-bit pointer per score.
_NUM_WARPS = 8

# Positional dims from which the table window and tl.dot replace the loop of P gathered loads per tile
# (module docstring). Below 16 the dot's operand would be padded to 16 columns (4x the work at
# Zipformer's P = 4) while the loop costs only P loads per score; from 16 on the padding costs at most
# 2x (none at 16, 32, 64) and P loads per score dominate.
_WIDE_POS_MIN_DIM = 16


def _default_blocks(head_dim: int, backward: bool, wide_pos: bool) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N). ``head_dim``: the larger of D and, on the wide positional path, P."""
    if _interpreted():
        return 16, 16  # the interpreter's cost grows with the block area
    if _pad_dim(head_dim) > 64:
        return 16, 32
    # The wide path's window is BLOCK_M + BLOCK_N - 1 rows padded to a power of two: 63 -> 64 at 32 x 32
    # (a 64-column positional dot per 32 key columns) but 95 -> 128 at 64 x 32.
    return (32, 32) if backward or wide_pos else (64, 32)


def _last_dim_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


class _Problem:
    """Validated inputs of one call and the kernel arguments derived from them."""

    def __init__(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor | None,
        q_pos: Tensor | None,
        pos_table: Tensor | None,
        key_bias: Tensor | None,
        scale: float,
        chunk_size: int,
        left_chunks: int,
        block_m: int | None,
        block_n: int | None,
    ) -> None:
        if q.dim() != 4 or k.dim() != 4:
            raise ValueError(f"q and k must be (H, N, T, D), got {tuple(q.shape)} and {tuple(k.shape)}")
        num_heads, batch_size, num_queries, head_dim = q.shape
        num_keys = k.shape[2]
        if num_queries == 0 or num_keys == 0:
            raise ValueError(f"empty sequence: T_q={num_queries}, T_k={num_keys}")
        if k.shape[:2] != q.shape[:2] or k.shape[3] != head_dim:
            raise ValueError(f"k {tuple(k.shape)} does not match q {tuple(q.shape)}")
        if k.dtype != q.dtype or (v is not None and v.dtype != q.dtype):
            value_dtype = None if v is None else v.dtype
            raise ValueError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {value_dtype}")
        if v is not None and (v.dim() != 4 or v.shape[:3] != k.shape[:3]):
            raise ValueError(f"v must be (H, N, T_k, D_v) matching k {tuple(k.shape)}, got {tuple(v.shape)}")
        if (q_pos is None) != (pos_table is None):
            raise ValueError("q_pos and pos_table go together")
        if q_pos is not None:
            pos_dim = q_pos.shape[-1]
            if q_pos.shape != (num_heads, batch_size, num_queries, pos_dim):
                raise ValueError(f"q_pos must be (H, N, T_q, P), got {tuple(q_pos.shape)}")
            if pos_table.shape != (num_heads, num_queries + num_keys - 1, pos_dim):
                raise ValueError(
                    f"pos_table must be (H, T_q + T_k - 1, P) = ({num_heads}, {num_queries + num_keys - 1}, "
                    f"{pos_dim}), got {tuple(pos_table.shape)}"
                )
        if key_bias is not None:
            if key_bias.shape != (batch_size, num_keys):
                raise ValueError(f"key_bias must be (N, T_k) = ({batch_size}, {num_keys}), got {tuple(key_bias.shape)}")
            if key_bias.requires_grad:
                raise ValueError("key_bias is a mask: it gets no gradient; pass a tensor without requires_grad")
        if chunk_size > 0 and num_keys < num_queries:
            raise ValueError(f"a chunk mask needs T_k >= T_q, got T_q={num_queries}, T_k={num_keys}")
        tensors = [t for t in (q, k, v, q_pos, pos_table, key_bias) if t is not None]
        if len({t.device for t in tensors}) != 1:
            raise ValueError("all inputs must be on one device")
        if not (q.is_cuda or _interpreted()):
            raise RuntimeError("Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 on CPU)")

        self.q = _last_dim_contiguous(q)
        self.k = _last_dim_contiguous(k)
        self.v = None if v is None else _last_dim_contiguous(v)
        self.q_pos = None if q_pos is None else _last_dim_contiguous(q_pos)
        self.pos_table = pos_table
        self.key_bias = key_bias
        self.scale = float(scale)
        self.has_chunk = chunk_size > 0
        self.chunk_size = chunk_size if chunk_size > 0 else 1
        self.left_chunks = left_chunks if left_chunks >= 0 else -1
        self.num_heads, self.batch_size, self.num_queries, self.head_dim = num_heads, batch_size, num_queries, head_dim
        self.num_keys = num_keys
        self.value_dim = 1 if v is None else v.shape[3]
        self.pos_dim = 1 if q_pos is None else q_pos.shape[3]
        self.wide_pos = q_pos is not None and self.pos_dim >= _WIDE_POS_MIN_DIM
        for name, block in (("block_m", block_m), ("block_n", block_n)):
            if block is not None and (block < 16 or block & (block - 1)):
                raise ValueError(f"{name} must be a power of two >= 16, got {block}")
        self.block_m = block_m
        self.block_n = block_n
        self.ieee = q.dtype == torch.float32

    def blocks(self, backward: bool) -> tuple[int, int]:
        """(BLOCK_M, BLOCK_N): the caller's, else the defaults for these dims and pass."""
        widest = max(self.head_dim, self.pos_dim) if self.wide_pos else self.head_dim
        default_m, default_n = _default_blocks(widest, backward, self.wide_pos)
        return self.block_m or default_m, self.block_n or default_n

    def tile_constants(self, backward: bool, blocks: tuple[int, int] | None = None) -> dict:
        """Block sizes (``blocks``, else :meth:`blocks`), padded dims and path flags shared by the kernels of
        one pass."""
        block_m, block_n = blocks or self.blocks(backward)
        return dict(
            D=self.head_dim,
            P=self.pos_dim,
            D_PAD=_pad_dim(self.head_dim),
            # The wide path's P is a tl.dot operand side (>= 16); the narrow path's only a dq_pos tile.
            P_PAD=_pad_dim(self.pos_dim) if self.wide_pos else triton.next_power_of_2(self.pos_dim),
            DIAG=triton.next_power_of_2(block_m + block_n - 1),
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            HAS_POS=self.q_pos is not None,
            WIDE_POS=self.wide_pos,
            HAS_KB=self.key_bias is not None,
            HAS_CHUNK=self.has_chunk,
            IEEE=self.ieee,
        )

    def common_args(self) -> tuple:
        """Pointers and strides of q, k, q_pos, the table and the key bias (dummies where absent)."""
        q, k = self.q, self.k
        qp = self.q_pos if self.q_pos is not None else q
        tab = self.pos_table if self.pos_table is not None else q
        kb = self.key_bias if self.key_bias is not None else q
        qp_strides = qp.stride()[:3] if self.q_pos is not None else (0, 0, 0)
        tab_strides = tab.stride() if self.pos_table is not None else (0, 0, 0)
        kb_strides = kb.stride() if self.key_bias is not None else (0, 0)
        return (q, k, qp, tab, kb), (
            *q.stride()[:3],
            *k.stride()[:3],
            *qp_strides,
            *tab_strides,
            *kb_strides,
        )

    def lse_buffer(self) -> Tensor:
        return torch.empty(
            (self.num_heads, self.batch_size, self.num_queries), device=self.q.device, dtype=torch.float32
        )


# Shared memory per thread block differs by GPU (about 228 KB on an H100, 164 KB on an A100, 100 KB on
# consumer cards), and what a kernel needs depends on its padded dims and dtype (float32 tiles at P = 135
# exceed even the H100's at 16 x 32). A pass whose kernels do not fit is run again with the larger block
# halved, down to 16 x 16; the tiles that fit are remembered per pass and shape class. Tiles the caller
# chose are never changed: then the error stands.
_FITTING_BLOCKS: dict[tuple, tuple[int, int]] = {}


def _run_with_fitting_blocks(pb: _Problem, pass_name: str, backward: bool, launch):
    """``launch(tiles)`` with the default tiles, or the largest smaller ones whose kernels fit."""
    key = (
        pass_name,
        pb.q.device,
        pb.q.dtype,
        pb.head_dim,
        pb.value_dim,
        pb.pos_dim,
        pb.wide_pos,
        pb.q_pos is not None,
        pb.key_bias is not None,
        pb.has_chunk,
    )
    block_m, block_n = _FITTING_BLOCKS.get(key) or pb.blocks(backward)
    while True:
        try:
            result = launch(pb.tile_constants(backward, (block_m, block_n)))
        except OutOfResources:
            if pb.block_m or pb.block_n or (block_m, block_n) == (16, 16):
                raise
            if block_m >= block_n:
                block_m //= 2
            else:
                block_n //= 2
            continue
        _FITTING_BLOCKS[key] = (block_m, block_n)
        return result


def _forward(pb: _Problem, with_values: bool) -> tuple[Tensor | None, Tensor]:
    return _run_with_fitting_blocks(
        pb, "forward" if with_values else "lse", False, lambda tiles: _forward_tiles(pb, with_values, tiles)
    )


def _forward_tiles(pb: _Problem, with_values: bool, tiles: dict) -> tuple[Tensor | None, Tensor]:
    (
        (q, k, qp, tab, kb),
        (sq_h, sq_n, sq_t, sk_h, sk_n, sk_t, sqp_h, sqp_n, sqp_t, stab_h, stab_r, stab_c, skb_n, skb_t),
    ) = pb.common_args()
    v = pb.v if with_values else q
    out = (
        torch.empty((pb.num_heads, pb.batch_size, pb.num_queries, pb.value_dim), device=q.device, dtype=v.dtype)
        if with_values
        else q
    )
    lse = pb.lse_buffer()
    grid = (triton.cdiv(pb.num_queries, tiles["BLOCK_M"]), pb.num_heads * pb.batch_size)
    _fwd_kernel[grid](
        q,
        k,
        v,
        qp,
        tab,
        kb,
        out,
        lse,
        sq_h,
        sq_n,
        sq_t,
        sk_h,
        sk_n,
        sk_t,
        *(v.stride()[:3] if with_values else (0, 0, 0)),
        sqp_h,
        sqp_n,
        sqp_t,
        stab_h,
        stab_r,
        stab_c,
        skb_n,
        skb_t,
        *(out.stride()[:3] if with_values else (0, 0, 0)),
        pb.batch_size,
        pb.num_queries,
        pb.num_keys,
        pb.scale,
        pb.chunk_size,
        pb.left_chunks,
        DV=pb.value_dim,
        DV_PAD=_pad_dim(pb.value_dim),
        HAS_V=with_values,
        **tiles,
        num_warps=_NUM_WARPS,
    )
    return (out if with_values else None), lse


def _weights(pb: _Problem, lse: Tensor) -> Tensor:
    return _run_with_fitting_blocks(pb, "weights", False, lambda tiles: _weights_tiles(pb, lse, tiles))


def _weights_tiles(pb: _Problem, lse: Tensor, tiles: dict) -> Tensor:
    (
        (q, k, qp, tab, kb),
        (sq_h, sq_n, sq_t, sk_h, sk_n, sk_t, sqp_h, sqp_n, sqp_t, stab_h, stab_r, stab_c, skb_n, skb_t),
    ) = pb.common_args()
    weights = torch.empty((pb.num_heads, pb.batch_size, pb.num_queries, pb.num_keys), device=q.device, dtype=q.dtype)
    num_key_blocks = triton.cdiv(pb.num_keys, tiles["BLOCK_N"])
    grid = (triton.cdiv(pb.num_queries, tiles["BLOCK_M"]) * num_key_blocks, pb.num_heads * pb.batch_size)
    _weights_kernel[grid](
        q,
        k,
        qp,
        tab,
        kb,
        lse,
        weights,
        sq_h,
        sq_n,
        sq_t,
        sk_h,
        sk_n,
        sk_t,
        sqp_h,
        sqp_n,
        sqp_t,
        stab_h,
        stab_r,
        stab_c,
        skb_n,
        skb_t,
        *weights.stride()[:3],
        pb.batch_size,
        pb.num_queries,
        pb.num_keys,
        pb.scale,
        pb.chunk_size,
        pb.left_chunks,
        num_key_blocks,
        **tiles,
        num_warps=_NUM_WARPS,
    )
    return weights


def _backward(
    pb: _Problem, lse: Tensor, delta: Tensor, grad_out: Tensor | None, grad_weights: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Gradients (q, k, v, q_pos, table) from ``grad_out`` (attention) or ``grad_weights`` (weights)."""
    return _run_with_fitting_blocks(
        pb,
        "backward" if grad_weights is None else "weights backward",
        True,
        lambda tiles: _backward_tiles(pb, lse, delta, grad_out, grad_weights, tiles),
    )


def _backward_tiles(
    pb: _Problem, lse: Tensor, delta: Tensor, grad_out: Tensor | None, grad_weights: Tensor | None, tiles: dict
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    (q, k, qp, tab, kb), common_strides = pb.common_args()
    from_weights = grad_weights is not None
    v = q if from_weights else pb.v
    do = q if from_weights else _last_dim_contiguous(grad_out)
    dw = _last_dim_contiguous(grad_weights) if from_weights else q
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = q if from_weights else torch.empty_like(v)
    has_pos = pb.q_pos is not None
    dqp = torch.empty_like(qp) if has_pos else q
    dtab = torch.zeros(tab.shape, device=q.device, dtype=torch.float32) if has_pos else q
    (sq_h, sq_n, sq_t, sk_h, sk_n, sk_t, sqp_h, sqp_n, sqp_t, stab_h, stab_r, stab_c, skb_n, skb_t) = common_strides
    v_strides = (0, 0, 0) if from_weights else v.stride()[:3]
    do_strides = (0, 0, 0) if from_weights else do.stride()[:3]
    dw_strides = dw.stride()[:3] if from_weights else (0, 0, 0)
    block_m, block_n = tiles["BLOCK_M"], tiles["BLOCK_N"]
    sizes = dict(
        DV=pb.value_dim,
        DV_PAD=_pad_dim(pb.value_dim),
        FROM_WEIGHTS=from_weights,
        **tiles,
        num_warps=_NUM_WARPS,
    )
    scalars = (pb.batch_size, pb.num_queries, pb.num_keys, pb.scale, pb.chunk_size, pb.left_chunks)
    head_batch = pb.num_heads * pb.batch_size
    inputs_and_strides = (
        sq_h,
        sq_n,
        sq_t,
        sk_h,
        sk_n,
        sk_t,
        *v_strides,
        sqp_h,
        sqp_n,
        sqp_t,
        stab_h,
        stab_r,
        stab_c,
        skb_n,
        skb_t,
        *do_strides,
        *dw_strides,
    )
    _bwd_dkdv_kernel[(triton.cdiv(pb.num_keys, block_n), head_batch)](
        q,
        k,
        v,
        qp,
        tab,
        kb,
        do,
        dw,
        lse,
        delta,
        dk,
        dv,
        *inputs_and_strides,
        *dk.stride()[:3],
        *((0, 0, 0) if from_weights else dv.stride()[:3]),
        *scalars,
        **sizes,
    )
    _bwd_dq_kernel[(triton.cdiv(pb.num_queries, block_m), head_batch)](
        q,
        k,
        v,
        qp,
        tab,
        kb,
        do,
        dw,
        lse,
        delta,
        dq,
        dqp,
        dtab,
        *inputs_and_strides,
        *dq.stride()[:3],
        *(dqp.stride()[:3] if has_pos else (0, 0, 0)),
        *(dtab.stride()[:2] if has_pos else (0, 0)),
        *scalars,
        **sizes,
    )
    return (
        dq,
        dk,
        None if from_weights else dv,
        dqp if has_pos else None,
        dtab.to(tab.dtype) if has_pos else None,
    )


class RelPosAttentionFunction(torch.autograd.Function):
    """``softmax(scores) @ v`` with the fused kernels; see :func:`rel_pos_attention`."""

    @staticmethod
    def forward(ctx, q, k, v, q_pos, pos_table, key_bias, scale, chunk_size, left_chunks, block_m, block_n):
        pb = _Problem(q, k, v, q_pos, pos_table, key_bias, scale, chunk_size, left_chunks, block_m, block_n)
        out, lse = _forward(pb, with_values=True)
        ctx.save_for_backward(pb.q, pb.k, pb.v, pb.q_pos, pb.pos_table, pb.key_bias, out, lse)
        ctx.config = (scale, chunk_size, left_chunks, block_m, block_n)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, q_pos, pos_table, key_bias, out, lse = ctx.saved_tensors
        pb = _Problem(q, k, v, q_pos, pos_table, key_bias, *ctx.config)
        delta = (grad_out.float() * out.float()).sum(dim=-1).contiguous()
        dq, dk, dv, dqp, dtab = _backward(pb, lse, delta, grad_out, None)
        return dq, dk, dv, dqp, dtab, None, None, None, None, None, None


class RelPosAttentionWeightsFunction(torch.autograd.Function):
    """Attention weights with the tiled kernels; see :func:`rel_pos_attention_weights`."""

    @staticmethod
    def forward(ctx, q, k, q_pos, pos_table, key_bias, scale, chunk_size, left_chunks, block_m, block_n):
        pb = _Problem(q, k, None, q_pos, pos_table, key_bias, scale, chunk_size, left_chunks, block_m, block_n)
        _, lse = _forward(pb, with_values=False)
        weights = _weights(pb, lse)
        ctx.save_for_backward(pb.q, pb.k, pb.q_pos, pb.pos_table, pb.key_bias, weights, lse)
        ctx.config = (scale, chunk_size, left_chunks, block_m, block_n)
        return weights

    @staticmethod
    def backward(ctx, grad_weights):
        q, k, q_pos, pos_table, key_bias, weights, lse = ctx.saved_tensors
        pb = _Problem(q, k, None, q_pos, pos_table, key_bias, *ctx.config)
        delta = (grad_weights.float() * weights.float()).sum(dim=-1).contiguous()
        dq, dk, _, dqp, dtab = _backward(pb, lse, delta, None, grad_weights)
        return dq, dk, dqp, dtab, None, None, None, None, None, None


def rel_pos_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_pos: Tensor | None = None,
    pos_table: Tensor | None = None,
    key_bias: Tensor | None = None,
    chunk_size: int = -1,
    left_chunks: int = -1,
    scale: float = 1.0,
    block_m: int | None = None,
    block_n: int | None = None,
) -> Tensor:
    """Fused attention output ``(H, N, T_q, D_v)``.

    Args:
        q, k: ``(H, N, T_q, D)``, ``(H, N, T_k, D)``; v: ``(H, N, T_k, D_v)``.
        q_pos, pos_table: ``(H, N, T_q, P)`` and ``(H, T_q + T_k - 1, P)``, or both None.
        key_bias: additive ``(N, T_k)`` (``-inf`` = padding), no gradient.
        chunk_size, left_chunks: chunked limited-context mask (``chunk_size <= 0``: none;
            ``left_chunks < 0``: unlimited left context).
        scale: multiplies ``q . k`` (not the positional term).
        block_m, block_n: tile sizes (powers of two >= 16); default by device and head dim.
    """
    return RelPosAttentionFunction.apply(
        q, k, v, q_pos, pos_table, key_bias, scale, chunk_size, left_chunks, block_m, block_n
    )


def rel_pos_attention_weights(
    q: Tensor,
    k: Tensor,
    q_pos: Tensor | None = None,
    pos_table: Tensor | None = None,
    key_bias: Tensor | None = None,
    chunk_size: int = -1,
    left_chunks: int = -1,
    scale: float = 1.0,
    block_m: int | None = None,
    block_n: int | None = None,
) -> Tensor:
    """Attention weights ``(H, N, T_q, T_k)`` in ``q``'s dtype; arguments as :func:`rel_pos_attention`."""
    return RelPosAttentionWeightsFunction.apply(
        q, k, q_pos, pos_table, key_bias, scale, chunk_size, left_chunks, block_m, block_n
    )
