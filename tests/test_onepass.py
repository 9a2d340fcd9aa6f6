"""The one vocabulary pass: precision against float64, TRL's outputs to the bit, the row layout, the Triton fold."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import TINY_GRPO
from trl.kernels.chunked_logprob import ChunkedLogProbFunction

from entropy_rl import onepass, stats
from entropy_rl.config import EntropyGRPOConfig
from entropy_rl.jsonl import read_rows

TOLERANCE = 1e-6  # absolute, on H, S, N and S - N from fp32 logits


def float64_reference(z: torch.Tensor, targets: torch.Tensor):
    """log p(target), H, N and S of softmax(z), from the same fp32 logits, in float64."""
    logp_all = torch.log_softmax(z.double(), -1)
    p = logp_all.exp()
    entropy = -(p * logp_all).sum(-1)
    nec = (p * p * (logp_all + entropy[:, None])).sum(-1)
    logp = logp_all.gather(1, targets[:, None])[:, 0]
    return logp, entropy, nec, stats.discriminator(logp, entropy)


def hard_logits(rows: int, vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits up to |z| = 200: spread rows, near-deterministic rows (one token ~30-400 nats ahead), ties at the max."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([1.0, 10.0, 50.0, 200.0]).repeat_interleave(rows // 4)[:, None]
    z = (torch.rand(rows, vocab, generator=g) * 2 - 1) * scale
    z[0::4, 3] = 200.0  # a sure token (p ~ 1) at the largest logit
    z[1::4, vocab - 1] = z[1::4].amax(-1) + 30.0  # sure token in the last tile: the running max moves late
    z[2::4, :2] = 200.0  # two tied sure tokens
    targets = torch.randint(0, vocab, (rows,), generator=g)
    targets[0::4], targets[2::4] = 3, 1  # sample the sure tokens too (S ~ 0, log p ~ 0)
    return z, targets


def fold_tiles(z: torch.Tensor, targets: torch.Tensor, chunk: int) -> stats.VocabSums:
    sums = stats.VocabSums.empty(z.shape[0], z.device)
    for start in range(0, z.shape[1], chunk):
        sums.fold(z[:, start : start + chunk].clone(), targets - start)
    return sums


@pytest.mark.parametrize("vocab,chunk", [(152_064, 32_768), (1_000, 7), (76, 76)])
def test_shifted_sums_match_float64(vocab, chunk):
    z, targets = hard_logits(16, vocab)
    logp, entropy, nec = fold_tiles(z, targets, chunk).finish()
    want_logp, want_h, want_n, want_s = float64_reference(z, targets)
    s = stats.discriminator(logp.double(), entropy.double())
    for name, got, want in (
        ("H", entropy, want_h),
        ("N", nec, want_n),
        ("S", s, want_s),
        ("S-N", s - nec, want_s - want_n),
    ):
        err = (got.double() - want).abs().max().item()
        assert err <= TOLERANCE, f"{name}: {err:.2e}"
    # log p is fp32 of a number up to ~400: its own rounding (2^-24 relative) is the bound.
    torch.testing.assert_close(logp.double(), want_logp, atol=1e-6, rtol=2**-23)
    assert torch.isfinite(torch.stack([logp, entropy, nec])).all()


def test_vocab_stats_reference_path_is_precise_at_large_logits():
    # The projection path: hidden @ weight.T with logits up to ~200 and a temperature below 1.
    g = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(24, 32, generator=g) * 4, torch.randn(5_000, 32, generator=g) * 4
    targets = torch.randint(0, 5_000, (24,), generator=g)
    logp, entropy, nec = stats.vocab_stats(hidden, weight, targets, temperature=0.7, vocab_chunk=1_024)
    z = (hidden @ weight.T) * (1 / 0.7)
    assert z.abs().max() > 150
    _, want_h, want_n, _ = float64_reference(z, targets)
    assert (entropy.double() - want_h).abs().max() <= TOLERANCE
    assert (nec.double() - want_n).abs().max() <= TOLERANCE


def apply_both(autocast: bool, softcap, scale, temperature, rows=40, vocab=37, chunk=8):
    g = torch.Generator().manual_seed(2)
    hidden = (torch.randn(rows, 16, generator=g) * 3).requires_grad_()
    weight = torch.randn(vocab, 16, generator=g).requires_grad_()
    bias, targets = torch.randn(vocab, generator=g), torch.randint(0, vocab, (rows,), generator=g)
    results = []
    for fn in (ChunkedLogProbFunction, onepass.OnePassLogProbFunction):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), onepass.capture() as calls:
            logp, entropy, sq, *_ = fn.apply(hidden, weight, bias, targets, temperature, chunk, softcap, scale,
                                             ("log_probs", "entropy", "log_sum_sq_probs"))  # fmt: skip
        grads = torch.autograd.grad(logp.sum() + 0.3 * entropy.sum(), (hidden, weight))
        results.append(((logp, entropy, sq, *grads), calls))
    return results, (hidden, weight, bias, targets)


@pytest.mark.parametrize(
    "autocast,softcap,scale,temperature,rows",
    # bf16 tiles, softcap, scale and temperature; and more rows than TRL's 4,096-token chunk
    [(False, None, 1.0, 1.0, 40), (True, 5.0, 0.5, 0.7, 40), (False, None, 1.0, 0.9, 4_100)],
)
def test_one_pass_function_gives_trl_outputs_and_gradients_to_the_bit(autocast, softcap, scale, temperature, rows):
    ((trl_out, trl_calls), (ours_out, calls)), _ = apply_both(autocast, softcap, scale, temperature, rows=rows)
    for theirs, ours in zip(trl_out, ours_out, strict=True):
        assert torch.equal(theirs, ours)
    assert trl_calls == [] and len(calls) == 1 and not calls[0].compact  # TRL's own function appends nothing


def test_one_pass_rows_equal_the_reference_path():
    ((_, _), (_, calls)), (hidden, weight, bias, targets) = apply_both(False, 5.0, 0.5, 0.7)
    want = stats.vocab_stats(
        hidden.detach(), weight.detach(), targets, bias=bias, temperature=0.7, logit_scale=0.5, softcap=5.0
    )
    for got, ref in zip(calls[0][:3], want, strict=True):
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)


def test_capture_restores_trls_function():
    from trl.trainer import utils as trl_utils

    with pytest.raises(RuntimeError), onepass.capture():
        assert trl_utils._ChunkedLogProbFunction is onepass.OnePassLogProbFunction
        raise RuntimeError
    assert trl_utils._ChunkedLogProbFunction is ChunkedLogProbFunction


def one_step_args(tmp_path, **overrides) -> EntropyGRPOConfig:
    return EntropyGRPOConfig(output_dir=str(tmp_path), **{**TINY_GRPO, "max_steps": 1, **overrides})


@pytest.fixture()
def trainer(make_trainer, tmp_path):
    return make_trainer(one_step_args(tmp_path))


def test_trainer_one_pass_places_every_token_like_a_full_softmax(trainer):
    # Left-padded prompts, right-padded completions, and TRL's row chunks of 3: each token lands at its position.
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(4, 20, (7, 11), generator=g)
    attention = torch.ones(7, 11, dtype=torch.long)
    attention[1, :2] = 0
    attention[4, 8:] = 0
    attention[6, 6:] = 0
    keep = 6
    with torch.no_grad():
        (logps, entropies, _), got = trainer._one_pass(trainer.model, ids, attention, keep, 3, compute_entropy=True)
        logits = trainer.model(input_ids=ids, attention_mask=attention).logits[:, -keep - 1 : -1]
    mask = onepass.label_mask(ids, attention, keep)[:, -keep:]
    z = logits.reshape(-1, logits.shape[-1]) / trainer.temperature
    want = float64_reference(z, ids[:, -keep:].reshape(-1))
    for value, ref in zip(got, want[:3], strict=True):
        torch.testing.assert_close(value.double(), torch.where(mask, ref.view(mask.shape), 0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(got.logp, logps)  # TRL's log p, from the same tiles
    torch.testing.assert_close(got.entropy, entropies, atol=1e-6, rtol=0)


@pytest.mark.parametrize("regularizer", ["clip_v", "clip_cov"])
def test_regularizers_without_diagnostics_take_the_one_pass_only_when_they_need_n(make_trainer, tmp_path, regularizer):
    # diagnostics=False: Clip_V still gets N (one pass), Clip-Cov still edits (TRL's plain call)
    params = {"clip_v_mu": 0.5, "clip_v_max_frac": 0.05} if regularizer == "clip_v" else {"clip_cov_lb": -5.0}
    trainer = make_trainer(
        one_step_args(tmp_path, regularizer=regularizer, diagnostics=False, dynamics_every=0, **params)
    )
    trainer.train()
    (row,) = read_rows(tmp_path / "metrics.jsonl")
    assert row[f"reg/{regularizer}/" + ("removed_frac" if regularizer == "clip_v" else "clipped_frac")] > 0
    assert "discriminator/N_mean" not in row


def test_compact_rows_are_placed_like_trl_places_them():
    # Triton devices score only the labelled positions; rebuild that layout from the full one and compare.
    ids = torch.arange(4 * 7).view(4, 7) % 9 + 4
    attention = torch.ones(4, 7, dtype=torch.long)
    attention[0, :3] = 0
    attention[2, 5:] = 0
    mask = onepass.label_mask(ids, attention, 4)
    full = [torch.randn(mask.numel()) for _ in range(3)]
    full_call = onepass.OnePassRows(*full, compact=False)
    compact_call = onepass.OnePassRows(*(x.view(mask.shape)[mask] for x in full), compact=True)
    a = onepass.per_position([full_call], ids, attention, 4, None)
    b = onepass.per_position([compact_call], ids, attention, 4, None)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert (a.nec[~mask[:, -4:]] == 0).all()


TRITON_CHECK = """
import math, torch
from trl.kernels.chunked_logprob import _BLOCK_SIZE, _forward_kernel, _torch_transform
from entropy_rl import stats
from entropy_rl.triton_fold import fold_tile
g = torch.Generator().manual_seed(0)
for softcap in (None, 30.0):
    args = {"logit_scale": 0.5, "softcap": softcap or 1.0, "inv_t": 1 / 0.7, "HAS_SOFTCAP": softcap is not None}
    z = (torch.rand(8, 3000, generator=g) * 2 - 1) * 400
    z[0, 2999] = 500.0
    targets = torch.randint(0, 3000, (8,), generator=g)
    ours, torch_path = stats.VocabSums.empty(8, "cpu"), stats.VocabSums.empty(8, "cpu")
    raw, torch_raw = torch.zeros(8), torch.zeros(8)
    # TRL's kernel state: running max, sum e, sum e z, sum e^2, sum z, max before target, target logit
    trl = [torch.full((8,), -math.inf), *(torch.zeros(8) for _ in range(4)), torch.full((8,), -math.inf)]
    trl.append(torch.zeros(8))
    for start in range(0, 3000, 1100):
        tile = z[:, start : start + 1100].contiguous()
        fold_tile(tile, targets, ours, raw, start, args)
        torch_path.fold(_torch_transform(tile, **args), targets - start, torch_raw)
        _forward_kernel[(8,)](tile, tile.stride(0), targets, *trl, start, tile.shape[1], BLOCK_SIZE=_BLOCK_SIZE,
            HAS_ENTROPY=True, HAS_LOG_SUM_SQ_PROBS=True, HAS_MEAN_LOGITS=False, HAS_IS_TOP1=False, **args)
    # TRL's sums to the bit (its kernel under the same interpreter), ours close to the torch path.
    for mine, theirs in ((ours.m, trl[0]), (ours.s, trl[1]), (raw, trl[2]), (ours.b, trl[3]), (ours.target, trl[6])):
        assert torch.equal(mine, theirs)
    for got, want in zip(ours.finish()[1:], torch_path.finish()[1:]):
        assert (got - want).abs().max() <= 2e-6, (got - want).abs().max()
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed (CPU-only torch)")
def test_triton_fold_matches_the_torch_path_under_the_interpreter(tmp_path):
    script = tmp_path / "triton_check.py"
    script.write_text(textwrap.dedent(TRITON_CHECK))
    root = str(Path(__file__).resolve().parents[1])
    paths = [root, *sys.path]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
