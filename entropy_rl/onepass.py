"""One vocabulary pass: H, log p(sampled) and N from the logits tiles TRL's fused LM head already computes.

TRL 1.16's GRPOTrainer scores tokens through `trl.trainer.utils.add_fused_lm_head`, whose forward calls
`ChunkedLogProbFunction` (trl/kernels/chunked_logprob.py): per [tokens x vocabulary] tile of logits it folds a running
max, sum e and sum e z. `OnePassLogProbFunction` runs the same tile loop and folds, in the same read of each tile,
the shifted sums of `stats.VocabSums` as well. TRL's outputs (log p, H, log sum p^2) come out bit for bit as TRL
computes them and its backward is inherited unchanged (N needs no gradient), so training is untouched; the extra
per-row statistics go to the list opened by `capture()`. No second projection onto the vocabulary, no copy of the
LM head and no [batch, sequence, vocabulary] tensor.

Precision: the statistics are those of the tile as TRL computes it, in the autocast dtype (bf16 on GPU by default),
i.e. of the same logits whose log p the update trains on; the sums themselves are fp32, relative to the running max.
tests/test_trl_contract.py guards every TRL internal used here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import torch
from trl.kernels.chunked_logprob import OPTIONAL_OUTPUTS, TOKEN_CHUNK_SIZE, ChunkedLogProbFunction
from trl.kernels.chunked_logprob import _use_triton as use_triton
from trl.trainer import utils as trl_utils

from .stats import VocabSums

# What GRPO requests, plus log sum p^2, which is the sum b of VocabSums. TRL's mean_logits and is_top1 are not folded.
SUPPORTED_OUTPUTS = frozenset({"log_probs", "entropy", "log_sum_sq_probs"})
# The list `capture()` appends to; None when no capture is open.
_sink: list[OnePassRows] | None = None


class OnePassRows(NamedTuple):
    """Per-row results of one fused-head call, in TRL's row layout (`compact`: only the labelled positions)."""

    logp: torch.Tensor
    entropy: torch.Tensor
    nec: torch.Tensor
    compact: bool


class TokenStats(NamedTuple):
    """[B, T] statistics of the completion tokens (0 at unlabelled positions)."""

    logp: torch.Tensor
    entropy: torch.Tensor
    nec: torch.Tensor


def _transform_(z: torch.Tensor, logit_scale, softcap, inv_t, HAS_SOFTCAP) -> torch.Tensor:
    """TRL's `_torch_transform` in place: the same operations in the same order, so the same bits, no allocation."""
    if logit_scale != 1.0:  # x * 1.0 == x: skip a pass over the tile
        z.mul_(logit_scale)
    if HAS_SOFTCAP:
        z.div_(softcap).tanh_().mul_(softcap)
    if inv_t != 1.0:
        z.mul_(inv_t)
    return z


class _Scratch:
    """Tile-sized fp32 buffers allocated once per forward: on CPU, allocating (and page-faulting) a fresh tensor for
    every elementwise step of every tile costs more than the step itself."""

    def __init__(self, rows: int, cols: int, device: torch.device):
        self.size, self.device = rows * cols, device
        self.d, self.e = (torch.empty(self.size, device=device, dtype=torch.float32) for _ in range(2))
        self.z: torch.Tensor | None = None  # only for bf16 or ragged tiles

    def tiles(self, tile: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z, d, e) for `tile`, contiguous; z is the tile itself when that is already a contiguous fp32 tensor (the
        product is not needed after the fold, so it is transformed in place): at most three fp32 tiles, as TRL."""
        n, cols = tile.shape
        d, e = (buf[: n * cols].view(n, cols) for buf in (self.d, self.e))
        if tile.dtype == torch.float32 and tile.is_contiguous():
            return tile, d, e
        if self.z is None:
            self.z = torch.empty(self.size, device=self.device, dtype=torch.float32)
        return self.z[: n * cols].view(n, cols).copy_(tile), d, e


def _fold_tiles(hidden, weight, bias, targets, chunk_size, compute_dtype, kernel_args, sums, raw_sum) -> None:
    """TRL's forward tile loop (same tiles, same dtypes), folding every tile once into `sums` and TRL's sum e z."""
    device, n_rows, vocab = hidden.device, hidden.shape[0], weight.shape[0]
    mm_buf = torch.empty((min(n_rows, TOKEN_CHUNK_SIZE), chunk_size), device=device, dtype=compute_dtype)
    fold_on_gpu = use_triton(device)
    if fold_on_gpu:
        from .triton_fold import fold_tile  # Triton is imported only where it runs
    else:
        scratch = _Scratch(mm_buf.shape[0], min(chunk_size, vocab), device)  # no wider than the widest tile
    for token_start in range(0, n_rows, TOKEN_CHUNK_SIZE):
        token_end = min(token_start + TOKEN_CHUNK_SIZE, n_rows)
        hidden_chunk = hidden[token_start:token_end].to(compute_dtype)
        block, raw = sums.rows(token_start, token_end), raw_sum[token_start:token_end]
        chunk_targets = targets[token_start:token_end]
        for start in range(0, vocab, chunk_size):
            end = min(start + chunk_size, vocab)
            tile = mm_buf[: token_end - token_start, : end - start]
            torch.mm(hidden_chunk, weight[start:end].to(compute_dtype).t(), out=tile)
            if bias is not None:
                tile.add_(bias[start:end].to(compute_dtype))
            if fold_on_gpu:
                fold_tile(tile, chunk_targets, block, raw, start, kernel_args)
            else:
                z, d, e = scratch.tiles(tile)
                block.fold(_transform_(z, **kernel_args), chunk_targets - start, raw, scratch=(d, e))


class OnePassLogProbFunction(ChunkedLogProbFunction):
    """`ChunkedLogProbFunction` whose forward also yields H, log p and N per row (see the module docstring)."""

    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        temperature: float,
        chunk_size: int,
        final_logit_softcapping: float | None = None,
        logit_scale: float = 1.0,
        outputs: tuple[str, ...] = OPTIONAL_OUTPUTS,
    ):
        if not set(outputs) <= SUPPORTED_OUTPUTS:
            raise NotImplementedError(f"one-pass statistics support the outputs {sorted(SUPPORTED_OUTPUTS)}: {outputs}")
        ctx.set_materialize_grads(False)  # as TRL: an unused entropy gradient costs nothing in backward
        device = hidden.device
        autocast = torch.is_autocast_enabled(device.type)
        compute_dtype = torch.get_autocast_dtype(device.type) if autocast else hidden.dtype
        kernel_args = {
            "logit_scale": logit_scale,
            "softcap": final_logit_softcapping or 1.0,
            "inv_t": 1 / temperature,
            "HAS_SOFTCAP": final_logit_softcapping is not None,
        }
        sums = VocabSums.empty(hidden.shape[0], device)
        x_sum_exp = torch.zeros(hidden.shape[0], device=device, dtype=torch.float32)
        _fold_tiles(hidden, weight, bias, targets, chunk_size, compute_dtype, kernel_args, sums, x_sum_exp)

        # TRL's outputs, with TRL's expressions (sums.m, .s, .b, .target are its running_max, sum_exp, sq_sum_exp
        # and target_logit), so log p and the entropy that carries TRL's gradient are TRL's to the bit.
        log_z = sums.m + torch.log(sums.s)
        logprobs = sums.target - log_z
        entropy = log_z - x_sum_exp / sums.s if "entropy" in outputs else None
        log_sum_sq = torch.log(sums.b) - 2 * torch.log(sums.s) if "log_sum_sq_probs" in outputs else None
        if _sink is not None:
            _sink.append(OnePassRows(*sums.finish(), compact=use_triton(device)))

        ctx.save_for_backward(hidden, weight, bias, targets, log_z, log_z if entropy is None else entropy)
        ctx.compute_dtype = compute_dtype
        ctx.chunk_size = chunk_size
        ctx.kernel_args = kernel_args
        if log_sum_sq is not None:
            ctx.mark_non_differentiable(log_sum_sq)
        return logprobs, entropy, log_sum_sq, None, None


@contextlib.contextmanager
def capture() -> Iterator[list[OnePassRows]]:
    """While open, TRL's fused LM head runs `OnePassLogProbFunction`; each call appends its rows to the yielded list.

    The fused forward looks the function up in trl.trainer.utils at call time, so swapping that name is enough; it is
    restored on exit, so the reference model and every other call keep TRL's own function.
    """
    global _sink
    previous = trl_utils._ChunkedLogProbFunction, _sink
    calls: list[OnePassRows] = []
    trl_utils._ChunkedLogProbFunction, _sink = OnePassLogProbFunction, calls
    try:
        yield calls
    finally:
        trl_utils._ChunkedLogProbFunction, _sink = previous


def label_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int) -> torch.Tensor:
    """The positions TRL's fused head scores: GRPO's labels (`_get_per_token_logps_and_entropies`), shifted by one."""
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :-logits_to_keep] = -100
    return labels[:, 1:] != -100


def per_position(
    calls: list[OnePassRows], input_ids, attention_mask, logits_to_keep: int, batch_size: int | None
) -> TokenStats:
    """Place the captured rows back at their [B, logits_to_keep] positions, as TRL places its log-probs.

    TRL calls the model once per `batch_size` rows; on Triton devices it scores only the labelled positions
    (compact rows), elsewhere every position. Neither layout needs the host: no boolean indexing.
    """
    batch_size = batch_size or input_ids.size(0)
    starts = range(0, input_ids.size(0), batch_size)
    if len(calls) != len(starts):
        raise RuntimeError(f"expected {len(starts)} fused LM head calls, captured {len(calls)}")
    columns: list[list[torch.Tensor]] = [[], [], []]
    for start, call in zip(starts, calls, strict=True):
        rows = slice(start, start + batch_size)
        mask = label_mask(input_ids[rows], attention_mask[rows], logits_to_keep)
        for column, x in zip(columns, call[:3], strict=True):
            if call.compact:
                placed = x.new_zeros(mask.shape).masked_scatter(mask, x)
            else:
                placed = x.view(mask.shape).masked_fill(~mask, 0)
            column.append(placed[:, -logits_to_keep:])
    return TokenStats(*(torch.cat(column) for column in columns))
