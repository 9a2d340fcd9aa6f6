"""Triton fold of one logits tile into `stats.VocabSums` and TRL's sum e z: the GPU path of entropy_rl.onepass.

TRL's `_forward_kernel` (trl/kernels/chunked_logprob.py) with the shifted sums a = sum e d and c = sum e^2 d
(d = z - m) added: one program per token streams its row of the tile once, in blocks, keeping every sum in registers.
TRL's own sums (m, s, sum e z, sum e^2, the target logit) use TRL's expressions in TRL's order, so its log p and
entropy match its kernel. N costs about six FLOPs per element on data already loaded: the fold stays memory-bound.
Imported only where Triton runs (CUDA/XPU, or the CPU interpreter with TRITON_INTERPRET=1 in the tests).
"""

from __future__ import annotations

import triton
import triton.language as tl
from trl.kernels.chunked_logprob import _BLOCK_SIZE, _transform

from .stats import VocabSums


@triton.jit
def _fold_kernel(
    tile_ptr,
    tile_stride,
    targets_ptr,
    m_ptr,
    s_ptr,
    raw_ptr,
    a_ptr,
    b_ptr,
    c_ptr,
    target_ptr,
    vocab_start,
    n_cols,
    logit_scale,
    softcap,
    inv_t,
    HAS_SOFTCAP: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = tile_ptr + row * tile_stride
    local = tl.load(targets_ptr + row) - vocab_start
    m = tl.load(m_ptr + row)
    s = tl.load(s_ptr + row)
    raw = tl.load(raw_ptr + row)
    a = tl.load(a_ptr + row)
    b = tl.load(b_ptr + row)
    c = tl.load(c_ptr + row)
    for start in range(0, n_cols, BLOCK_SIZE):
        offsets = start + tl.arange(0, BLOCK_SIZE)
        mask = offsets < n_cols
        z = tl.load(row_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        z = _transform(z, logit_scale, softcap, inv_t, HAS_SOFTCAP)
        z = tl.where(mask, z, -float("inf"))
        new_m = tl.maximum(m, tl.max(z, axis=0))
        rescale = tl.exp(m - new_m)
        # How far the max moved; 0 before the first block, where every sum is 0 and m = -inf
        delta = tl.where(m == -float("inf"), 0.0, new_m - m)
        e = tl.where(mask, tl.exp(z - new_m), 0.0)
        d = tl.where(mask, z - new_m, 0.0)
        # Shift a and c to the new max with the old s and b, then add this block (see stats.VocabSums)
        a = (a - delta * s) * rescale + tl.sum(e * d, axis=0)
        c = (c - delta * b) * (rescale * rescale) + tl.sum(e * e * d, axis=0)
        s = s * rescale + tl.sum(e, axis=0)
        raw = raw * rescale + tl.sum(e * tl.where(mask, z, 0.0), axis=0)
        b = b * rescale * rescale + tl.sum(e * e, axis=0)
        m = new_m
    tl.store(m_ptr + row, m)
    tl.store(s_ptr + row, s)
    tl.store(raw_ptr + row, raw)
    tl.store(a_ptr + row, a)
    tl.store(b_ptr + row, b)
    tl.store(c_ptr + row, c)
    if (local >= 0) & (local < n_cols):
        z = tl.load(row_ptr + local).to(tl.float32)
        tl.store(target_ptr + row, _transform(z, logit_scale, softcap, inv_t, HAS_SOFTCAP))


def fold_tile(tile, targets, sums: VocabSums, raw_sum, vocab_start: int, kernel_args: dict) -> None:
    """`VocabSums.fold` for a tile on a Triton device (tile [n, cols] in the autocast dtype; sums are fp32 views)."""
    _fold_kernel[(tile.shape[0],)](
        tile,
        tile.stride(0),
        targets,
        sums.m,
        sums.s,
        raw_sum,
        sums.a,
        sums.b,
        sums.c,
        sums.target,
        vocab_start,
        tile.shape[1],
        BLOCK_SIZE=_BLOCK_SIZE,
        **kernel_args,
    )
