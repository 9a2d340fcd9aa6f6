"""Regularizers against hand-computed cases and against literal re-implementations of the research spec's pseudocode.

The `ref_*` functions are written from algorithms.md (§2 Clip-Cov / KL-Cov, §3 Clip_B / Clip_V, §4 STEER), not from
entropy_rl, so that a misreading inside the package cannot hide behind the same misreading in its test.
"""

from __future__ import annotations

import math
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from entropy_rl.errors import ConfigError
from entropy_rl.regularizers import (
    LOCAL,
    REGISTRY,
    Edits,
    Regularizer,
    aggregate,
    get_regularizer,
    parse_names,
)
from entropy_rl.tokens import TokenBatch

EPS = 0.2

# ---------------------------------------------------------------------------------------------------------------------
# Reference implementations, written from the papers and the authors' code (verl core_algos.py, STEER).
# Masks are float 0/1, advantages [B, T].


def ref_masked_mean(x, mask):
    """verl's masked_mean, which is also the token-mean aggregation."""
    return (x * mask).sum() / mask.sum()


def ref_ppo_terms(logp, old_logp, adv, eps_low, eps_high):
    ratio = torch.exp(logp - old_logp)
    return -adv * ratio, -adv * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)


def ref_ppo(logp, old_logp, adv, mask, eps_low=EPS, eps_high=EPS):
    l1, l2 = ref_ppo_terms(logp, old_logp, adv, eps_low, eps_high)
    return ref_masked_mean(torch.maximum(l1, l2), mask)


def ref_clip_cov(logp, old_logp, adv, mask, eps_low, eps_high, r, lb, ub, generator):
    """§2.1; returns (loss, w)."""
    l1, l2 = ref_ppo_terms(logp, old_logp, adv, eps_low, eps_high)
    ppo_clipped = (l2 > l1) & (mask > 0)
    cov = ((adv - ref_masked_mean(adv, mask)) * (logp - ref_masked_mean(logp.detach(), mask))).detach()
    cov[mask == 0] = -torch.inf
    cov[ppo_clipped] = -torch.inf
    n_clip = max(int(r * mask.sum().item()), 1)
    cand = torch.nonzero((cov > lb) & (cov < ub) & (mask > 0))
    chosen = cand[torch.randperm(len(cand), generator=generator)[: min(n_clip, len(cand))]]
    w = torch.ones_like(adv)
    w[chosen[:, 0], chosen[:, 1]] = 0
    return ref_masked_mean(torch.maximum(l1, l2) * w, mask), w


def ref_kl_cov(logp, old_logp, adv, mask, frac, beta):
    """§2.2; returns (loss, penalised)."""
    ratio = torch.exp(logp - old_logp)
    loss = -adv * ratio
    loss_kl = -adv * ratio + beta * torch.abs(logp - old_logp)
    v = torch.nonzero(mask.reshape(-1) > 0)[:, 0]
    adv_v, logp_v = adv.reshape(-1)[v], logp.detach().reshape(-1)[v]
    cov_v = (adv_v - adv_v.mean()) * (logp_v - logp_v.mean())
    k = max(1, int(len(v) * frac))
    top = torch.zeros(logp.numel(), dtype=torch.bool)
    top[v[torch.topk(cov_v, k, largest=True).indices]] = True
    top = top.view_as(logp)
    return ref_masked_mean(torch.where(top, loss_kl, loss), mask), top


def ref_steer_code_omega(logp, old_logp, adv, ent):
    """§4.2, the authors' code estimator."""
    x = torch.clamp(torch.exp(logp), 1e-8, 1 - 1e-8)
    f = x * (1 - x) * (torch.log(x) + ent)
    q = torch.clamp(torch.exp(old_logp), 1e-8, 1)
    omega = (adv / q) * f
    omega[~torch.isfinite(omega)] = 0
    return omega


def ref_steer_exact_omega(logp, old_logp, adv, ent, nec, eps_low, eps_high):
    """§4.2 / §3.2: A ratio 1[unclipped] (S - N)."""
    l1, l2 = ref_ppo_terms(logp, old_logp, adv, eps_low, eps_high)
    unclipped = (~(l2 > l1)).double()
    s = torch.exp(logp) * (logp + ent)
    return adv * torch.exp(logp - old_logp) * unclipped * (s - nec)


def ref_steer(logp, old_logp, adv, mask, omega, lam_min, lam_max, linear, eps_low=EPS, eps_high=EPS):
    """§4.3; returns (loss, w). omega is computed from detached values."""
    m = omega.abs()
    valid = mask > 0
    m_min, m_max = m[valid].min(), m[valid].max()
    if linear:
        if m_max == m_min:
            w = torch.full_like(m, (lam_min + lam_max) / 2)
        else:
            w = torch.clamp(lam_max - (m - m_min) * (lam_max - lam_min) / (m_max - m_min), lam_min, lam_max)
    else:
        kappa = -math.log(lam_min) / max(m_max.item(), 0.02)
        w = torch.clamp(torch.exp(-kappa * m), lam_min, 1)
    w = w * mask
    ratio = torch.exp(torch.clamp(logp - old_logp, -20, 20))
    loss = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - eps_low, 1 + eps_high))
    # The spec's dual-clip line (clip_ratio_c) is left out: TRL has no dual clip, and neither has our executor.
    return ref_masked_mean(loss * w, mask), w


def ref_clip_b(old_logp, adv, mask, ent, mu):
    """§3.3; returns the new mask."""
    s = torch.exp(old_logp) * (ent + old_logp)
    n = mask.sum()
    mu_s = (s * mask).sum() / n
    sd_s = torch.sqrt(((s - mu_s) ** 2 * mask).sum() / n)
    if sd_s < 1e-12:
        return mask
    keep = torch.where(adv >= 0, torch.ones_like(s), ((s - mu_s) >= -mu * sd_s).double())
    return mask * keep


def ref_clip_v(old_logp, adv, mask, ent, nec, mu, max_frac):
    """§3.4; returns the new mask."""
    s = torch.exp(old_logp) * (ent + old_logp)
    d = nec - s
    n = mask.sum()
    mean_d = (d * mask).sum() / n
    sd_d = torch.sqrt(((d - mean_d) ** 2 * mask).sum() / n)
    if sd_d < 1e-12:
        return mask
    keep_neg = d <= mu * sd_d
    keep = torch.where(adv > 0, torch.ones_like(keep_neg), keep_neg)
    if ((mask > 0) & ~keep).sum() / n > max_frac:
        budget = max(int(max_frac * n.item()), 1)
        violating = (adv < 0) & (mask > 0) & ~keep_neg
        scores = d.masked_fill(~violating, -torch.inf).reshape(-1)
        top = torch.topk(scores, min(budget, int(violating.sum())), largest=True).indices
        keep[violating] = True
        keep.view(-1)[top] = False
    return mask * keep.double()


# ---------------------------------------------------------------------------------------------------------------------
# Batches and the code under test


def grpo_advantages(rewards, group):
    r = torch.tensor(rewards, dtype=torch.float64).view(-1, group)
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-6)).view(-1, 1)


def random_batch(seed=0, vocab=6):
    """9 responses (3 groups of 3, one with zero advantage) x 40 tokens of a random policy over a small vocabulary.

    old_logps, entropies and nec come from a brute-force softmax over the vocabulary; the current policy has drifted
    (log-ratio noise 0.3) so that some tokens are PPO-clipped.
    """
    g = torch.Generator().manual_seed(seed)
    b, t = 9, 40
    logits = torch.randn(b, t, vocab, generator=g, dtype=torch.float64) * 3
    logp_all = torch.log_softmax(logits, -1)
    p = logp_all.exp()
    targets = torch.multinomial(p.view(-1, vocab), 1, generator=g).view(b, t)
    old_logps = logp_all.gather(-1, targets[..., None])[..., 0]
    entropies = -(p * logp_all).sum(-1)
    nec = (p * p * (logp_all + entropies[..., None])).sum(-1)
    logps = old_logps + 0.3 * torch.randn(b, t, generator=g, dtype=torch.float64)
    lengths = torch.randint(t // 2, t + 1, (b,), generator=g)
    mask = torch.arange(t)[None] < lengths[:, None]
    advantages = grpo_advantages([1, 0, 0, 1, 1, 1, 0.3, 0.9, 0.1], group=3)
    return dict(logps=logps, old_logps=old_logps, advantages=advantages, mask=mask, entropies=entropies, nec=nec)


def run(name, batch, seed=None, **params):
    """Our tensor-level entry point: (loss, d loss / d logps, metrics)."""
    logps = batch["logps"].clone().requires_grad_(True)
    loss, metrics = get_regularizer(name, **params).policy_loss(
        logps=logps,
        old_logps=batch["old_logps"],
        advantages=batch["advantages"],
        mask=batch["mask"],
        entropies=batch.get("entropies"),
        nec=batch.get("nec"),
        clip_ratio_low=batch.get("eps_low", EPS),
        clip_ratio_high=batch.get("eps_high", EPS),
        loss_agg_mode="token-mean",
        generator=None if seed is None else torch.Generator().manual_seed(seed),
    )
    (grad,) = torch.autograd.grad(loss, logps)
    return loss.detach(), grad, metrics


def run_ref(fn, batch):
    """A reference loss `fn(logp, old_logp, adv, mask)`, its gradient and its extra output."""
    logps = batch["logps"].clone().requires_grad_(True)
    adv = batch["advantages"].expand_as(logps)
    loss, extra = fn(logps, batch["old_logps"], adv, batch["mask"].double())
    (grad,) = torch.autograd.grad(loss, logps)
    return loss.detach(), grad, extra


def edits_of(name, batch, seed=None, **params):
    token_batch = TokenBatch(
        batch["logps"],
        batch["old_logps"],
        batch["advantages"],
        batch["mask"],
        batch.get("entropies"),
        batch.get("nec"),
        batch.get("eps_low", EPS),
        batch.get("eps_high", EPS),
    )
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return get_regularizer(name, **params).edits(token_batch, generator=generator), token_batch


def assert_same(got, want):
    torch.testing.assert_close(got[0], want[0], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(got[1], want[1], atol=1e-12, rtol=1e-10)


def one_row(values, pad=2, pad_value=0.0):
    """A [1, T] float64 row followed by `pad` padding positions, and its mask."""
    row = torch.tensor([list(values) + [pad_value] * pad], dtype=torch.float64)
    mask = torch.tensor([[True] * len(values) + [False] * pad])
    return row, mask


# ---------------------------------------------------------------------------------------------------------------------
# none: plain clipped PPO


def test_none_is_clipped_ppo_token_mean():
    # Tokens: (A=1, r=1), (A=1, r=1.5 -> clipped at 1.2), (A=-1, r=0.5 -> clipped at 0.8), (A=-1, r=1), padding.
    logps = torch.tensor([[-1.0, -1.0, -1.0, -1.0, -7.0]], dtype=torch.float64)
    old = logps - torch.log(torch.tensor([[1.0, 1.5, 0.5, 1.0, 9.0]], dtype=torch.float64))
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 1.0]], dtype=torch.float64)
    batch = dict(logps=logps, old_logps=old, advantages=adv, mask=torch.tensor([[1, 1, 1, 1, 0]]))
    loss, grad, metrics = run("none", batch)
    assert loss.item() == pytest.approx((-1 - 1.2 + 0.8 + 1) / 4)
    torch.testing.assert_close(grad, torch.tensor([[-0.25, 0.0, 0.0, 0.25, 0.0]], dtype=torch.float64))
    assert metrics == {}
    assert_same((loss, grad), run_ref(lambda *a: (ref_ppo(*a), None), batch)[:2])


# ---------------------------------------------------------------------------------------------------------------------
# Aggregation: verl 0.9.1's agg_loss (verl/trainer/ppo/core_algos.py), dp_size=1


def ref_agg_loss(loss_mat, loss_mask, mode):
    """verl 0.9.1's agg_loss transcribed for one process (dp_size=1, global_batch_size and loss_scale_factor None)."""
    if mode == "token-mean":
        return (loss_mat * loss_mask).sum() / loss_mask.sum()
    seq_sums = (loss_mat * loss_mask).sum(-1)
    if mode == "seq-mean-token-mean":
        seq_sums = seq_sums / (loss_mask.sum(-1) + 1e-8)
    seq_mask = (loss_mask.sum(-1) > 0).double()
    loss = (seq_sums * seq_mask).sum() / seq_mask.sum()
    return loss / loss_mask.shape[-1] if mode == "seq-mean-token-sum-norm" else loss


AGG_HAND = {  # rows (sum, tokens): (6, 3), (11, 2), (empty), (9, 1); T = 4
    "token-mean": 26 / 6,
    "seq-mean-token-mean": (2 + 5.5 + 9) / 3,
    "seq-mean-token-sum": (6 + 11 + 9) / 3,
    "seq-mean-token-sum-norm": (6 + 11 + 9) / 3 / 4,
}


@pytest.mark.parametrize("mode", list(AGG_HAND))
def test_aggregate_averages_over_non_empty_rows_only(mode):
    # Row 2 is fully padded; its values (7) must not count, and it must not count as a zero-loss row either.
    per_token = torch.tensor([[1, 2, 3, 5], [5, 6, 7, 7], [7, 7, 7, 7], [9, 7, 7, 7]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
    assert aggregate(per_token, mask, mode).item() == pytest.approx(AGG_HAND[mode], rel=1e-12)
    assert aggregate(per_token, mask, mode).item() == pytest.approx(ref_agg_loss(per_token, mask, mode).item())
    assert aggregate(per_token, torch.zeros_like(mask), mode).item() == 0  # no valid token: 0, not 0/0


class DropRowOne(Regularizer):
    """A filter that removes every token of row 1, as Clip_B / Clip_V may."""

    name = "drop_row_one"
    kind = "filter"

    def edits(self, batch, reduce=LOCAL, generator=None):
        keep = torch.ones_like(batch.mask)
        keep[1] = False
        return Edits(keep=keep)


@pytest.mark.parametrize(
    "mode,want",
    [  # on policy the token loss is -A; kept rows: row 0 (3 tokens of -1), row 3 (1 token of +4); T = 4
        ("token-mean", (-3 + 4) / 4),
        ("seq-mean-token-mean", (-1 + 4) / 2),
        ("seq-mean-token-sum", (-3 + 4) / 2),
        ("seq-mean-token-sum-norm", (-3 + 4) / 2 / 4),
    ],
)
def test_rows_emptied_by_a_filter_leave_the_sequence_mean(mode, want):
    logps = torch.full((4, 4), -1.0, dtype=torch.float64)
    advantages = torch.tensor([1.0, 2.0, 3.0, -4.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]])  # row 2: fully padded
    loss, _ = DropRowOne().policy_loss(
        logps=logps, old_logps=logps, advantages=advantages, mask=mask, loss_agg_mode=mode
    )
    assert loss.item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("mode", list(AGG_HAND))
@pytest.mark.parametrize("seed", [0, 1])
def test_aggregate_matches_verl_on_a_random_batch_with_empty_rows(mode, seed):
    batch = random_batch(seed)
    per_token = torch.randn(batch["mask"].shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    mask = batch["mask"].clone()
    mask[[2, 5]] = False
    got, want = aggregate(per_token, mask, mode), ref_agg_loss(per_token, mask.double(), mode)
    torch.testing.assert_close(got, want, atol=1e-7, rtol=1e-7)  # verl's 1e-8 in the token-mean denominator


# ---------------------------------------------------------------------------------------------------------------------
# Clip-Cov


def clip_cov_hand_batch():
    """Mean advantage 0 and mean log-prob -8 over the valid tokens, so cov = A * (logp + 8) exactly.

    row 0 (A=+1): cov  2 (candidate), 1 (= lb, excluded), 3 (PPO-clipped: r=1.5, excluded), -6
    row 1 (A=-1): cov  3 (candidate), 5 (= ub, excluded), -4, -4; the padding position would have cov 3.
    """
    centred = torch.tensor([[2.0, 1.0, 3.0, -6.0, 0.0], [-3.0, -5.0, 4.0, 4.0, -3.0]], dtype=torch.float64)
    logps = centred - 8
    old = logps.clone()
    old[0, 2] -= math.log(1.5)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    return dict(logps=logps, old_logps=old, advantages=torch.tensor([[1.0], [-1.0]], dtype=torch.float64), mask=mask)


def clip_cov_ref_args(batch):
    """The arguments of `ref_clip_cov` before the Clip-Cov parameters."""
    adv = batch["advantages"].expand_as(batch["logps"])
    eps_low, eps_high = batch.get("eps_low", EPS), batch.get("eps_high", EPS)
    return batch["logps"], batch["old_logps"], adv, batch["mask"].double(), eps_low, eps_high


def test_clip_cov_hand_case_band_is_exclusive_and_zeroed_tokens_stay_counted():
    batch = clip_cov_hand_batch()
    loss, grad, metrics = run("clip_cov", batch, seed=0, clip_cov_ratio=1.0)
    # Both candidates (0,0) and (1,0) zeroed; the 6 others: -1, -1.2 (clipped), -1 | +1, +1, +1; denominator 8.
    assert loss.item() == pytest.approx(-0.2 / 8)
    want_grad = torch.tensor([[0, -1, 0, -1, 0], [0, 1, 1, 1, 0]], dtype=torch.float64) / 8
    torch.testing.assert_close(grad, want_grad)
    assert metrics["clip_cov/clipped_frac"] == pytest.approx(2 / 8)
    assert metrics["clip_cov/clipped_frac/pos_adv"] == pytest.approx(1 / 4)
    assert metrics["clip_cov/clipped_frac/neg_adv"] == pytest.approx(1 / 4)
    assert metrics["clip_cov/candidate_frac"] == pytest.approx(2 / 8)


@pytest.mark.parametrize("seed", range(4))
def test_clip_cov_selects_at_least_one_token_and_the_reference_one(seed):
    batch = clip_cov_hand_batch()
    edits, _ = edits_of("clip_cov", batch, seed=seed, clip_cov_ratio=1e-4)
    chosen = (edits.weight == 0).nonzero().tolist()
    assert chosen in ([[0, 0]], [[1, 0]])
    _, w = ref_clip_cov(*clip_cov_ref_args(batch), 1e-4, 1.0, 5.0, torch.Generator().manual_seed(seed))
    torch.testing.assert_close(edits.weight, w)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("eps", [0.2, 1.0])  # 1.0: the paper scripts' setting (ratio range [0, 2])
def test_clip_cov_random_batch_matches_reference_selection_loss_and_gradient(seed, eps):
    batch = random_batch(seed) | dict(eps_low=eps, eps_high=eps)
    params = dict(clip_cov_ratio=0.02, clip_cov_lb=1.0, clip_cov_ub=5.0)
    edits, token_batch = edits_of("clip_cov", batch, seed=seed, **params)
    _, w = ref_clip_cov(*clip_cov_ref_args(batch), 0.02, 1.0, 5.0, torch.Generator().manual_seed(seed))
    torch.testing.assert_close(edits.weight, w)
    chosen = edits.weight == 0
    n_candidates = int(edits.metrics["clip_cov/candidate_frac"][0])
    assert int(chosen.sum()) == min(int(0.02 * int(batch["mask"].sum())), n_candidates) >= 4  # several tokens
    assert not (chosen & token_batch.ppo_clipped()).any() and not (chosen & ~token_batch.mask).any()
    ours = run("clip_cov", batch, seed=seed, **params)
    ref = run_ref(
        lambda lp, old, adv, m: ref_clip_cov(
            lp, old, adv, m, eps, eps, 0.02, 1.0, 5.0, torch.Generator().manual_seed(seed)
        ),
        batch,
    )
    assert_same(ours, ref)


# ---------------------------------------------------------------------------------------------------------------------
# KL-Cov


def kl_cov_hand_batch():
    """cov = A * (logp + 8) (means: A 0, log-prob -8): row 0 (A=+1) [1.5, 1, -1, 0.5], row 1 (A=-1) [-5, 3, 0.5, 3.5].

    The largest |cov| is -5 (row 1, token 0): it must not be chosen. The top 2 by signed cov are (1,3) and (1,1).
    Token (0,1) has ratio 3 and A > 0 and is not selected: without a PPO clip its loss is -3.
    """
    centred = torch.tensor([[1.5, 1.0, -1.0, 0.5, 0.0], [5.0, -3.0, -0.5, -3.5, 0.0]], dtype=torch.float64)
    logps = centred - 8
    old = logps.clone()
    old[0, 1] -= math.log(3.0)
    old[1, 1] -= 0.4  # log-ratio +0.4 on a penalised token
    old[1, 3] += 0.3  # log-ratio -0.3 on a penalised token
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    return dict(logps=logps, old_logps=old, advantages=torch.tensor([[1.0], [-1.0]], dtype=torch.float64), mask=mask)


def test_kl_cov_hand_case_signed_topk_no_ppo_clip_and_penalty_gradient():
    batch = kl_cov_hand_batch()
    coef = 0.5
    edits, _ = edits_of("kl_cov", batch, kl_cov_ratio=0.25, kl_cov_coef=coef)
    assert edits.penalty.nonzero().tolist() == [[1, 1], [1, 3]]  # k = int(8 * 0.25) = 2
    loss, grad, metrics = run("kl_cov", batch, kl_cov_ratio=0.25, kl_cov_coef=coef)
    r_up, r_down = math.exp(0.4), math.exp(-0.3)
    # row 0: -1, -3 (ratio 3, unclipped), -1, -1; row 1: 1, r_up + coef*0.4, 1, r_down + coef*0.3
    assert loss.item() == pytest.approx((-6 + 2 + r_up + r_down + coef * 0.7) / 8)
    want = torch.tensor([[-1, -3, -1, -1, 0], [1, r_up + coef, 1, r_down - coef, 0]], dtype=torch.float64) / 8
    torch.testing.assert_close(grad, want)  # the penalty pulls log p back towards the old policy from either side
    assert metrics["kl_cov/penalized_frac"] == pytest.approx(2 / 8)
    assert metrics["kl_cov/penalized_frac/neg_adv"] == pytest.approx(2 / 4)
    assert metrics["kl_cov/penalized_frac/pos_adv"] == 0.0


def test_kl_cov_k_is_at_least_one():
    edits, _ = edits_of("kl_cov", kl_cov_hand_batch(), kl_cov_ratio=1e-4)
    assert edits.penalty.nonzero().tolist() == [[1, 3]]


def test_kl_cov_is_inert_on_policy():
    batch = random_batch(1)
    batch["logps"] = batch["old_logps"].clone()
    loss, grad, _ = run("kl_cov", batch, kl_cov_ratio=0.05, kl_cov_coef=1.0)
    adv, mask = batch["advantages"].expand_as(grad), batch["mask"].double()
    # Plain unclipped policy gradient: ratio 1, d(-A r)/d logp = -A, and |log r| contributes neither value nor gradient.
    assert loss.item() == pytest.approx(-(adv * mask).sum().item() / mask.sum().item())
    torch.testing.assert_close(grad, -adv * mask / mask.sum())


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("ratio,coef", [(0.05, 1.0), (2e-3, 0.1)])
def test_kl_cov_random_batch_matches_reference(seed, ratio, coef):
    batch = random_batch(seed)
    ours = run("kl_cov", batch, kl_cov_ratio=ratio, kl_cov_coef=coef)
    ref = run_ref(lambda lp, old, adv, m: ref_kl_cov(lp, old, adv, m, ratio, coef), batch)
    assert_same(ours, ref)
    edits, _ = edits_of("kl_cov", batch, kl_cov_ratio=ratio, kl_cov_coef=coef)
    assert torch.equal(edits.penalty, ref[2])


# ---------------------------------------------------------------------------------------------------------------------
# STEER


@pytest.mark.parametrize("mapping", ["linear", "exp"])
@pytest.mark.parametrize("lam", [(0.8, 1.2), (0.7, 1.0)])
@pytest.mark.parametrize("seed", range(2))
def test_steer_code_estimator_matches_reference(mapping, lam, seed):
    batch = random_batch(seed)
    params = dict(steer_lambda_min=lam[0], steer_lambda_max=lam[1], steer_mapping=mapping)
    ours = run("steer", batch, **params)

    def ref(lp, old, adv, m):
        omega = ref_steer_code_omega(lp.detach(), old, adv, batch["entropies"])
        return ref_steer(lp, old, adv, m, omega, lam[0], lam[1], mapping == "linear")

    want = run_ref(ref, batch)
    assert_same(ours, want)
    edits, _ = edits_of("steer", batch, **params)
    torch.testing.assert_close(edits.weight, want[2])
    valid = edits.weight[batch["mask"]]
    assert valid.min().item() == pytest.approx(lam[0])  # the largest |Omega| gets lambda_min in both mappings
    if mapping == "linear":
        assert valid.max().item() == pytest.approx(lam[1])


@pytest.mark.parametrize("mapping", ["linear", "exp"])
def test_steer_exact_estimator_uses_brute_force_n(mapping):
    batch = random_batch(3)  # nec from a brute-force softmax over the vocabulary
    params = dict(steer_mapping=mapping, steer_estimator="exact")
    ours = run("steer", batch, **params)

    def ref(lp, old, adv, m):
        omega = ref_steer_exact_omega(lp.detach(), old, adv, batch["entropies"], batch["nec"], EPS, EPS)
        return ref_steer(lp, old, adv, m, omega, 0.8, 1.2, mapping == "linear")

    assert_same(ours, run_ref(ref, batch))
    edits, token_batch = edits_of("steer", batch, **params)
    clipped = token_batch.ppo_clipped() & token_batch.mask
    assert clipped.any()
    if mapping == "linear":  # a clipped token has Omega = 0, the smallest size: it keeps lambda_max
        assert torch.all(edits.weight[clipped] == 1.2)


def test_steer_all_equal_omega_gets_the_midpoint_and_padding_is_not_counted():
    # Same p, p_old, H and |A| on every valid token, so |Omega| is constant; padding carries wild values that must
    # neither break the tie nor enter the denominator. Ratio exp(-0.7): the A < 0 tokens are PPO-clipped.
    logps, mask = one_row([math.log(0.3)] * 4, pad=2, pad_value=-9.0)
    ent, _ = one_row([1.1] * 4, pad=2, pad_value=50.0)
    adv, _ = one_row([1.0, -1.0, 1.0, -1.0], pad=2, pad_value=7.0)
    batch = dict(logps=logps, old_logps=logps + 0.7, advantages=adv, mask=mask, entropies=ent)
    params = dict(steer_lambda_min=0.7, steer_lambda_max=1.0)
    edits, _ = edits_of("steer", batch, **params)
    torch.testing.assert_close(edits.weight, torch.tensor([[0.85] * 4 + [0.0] * 2], dtype=torch.float64))
    loss, grad, metrics = run("steer", batch, **params)
    r = math.exp(-0.7)
    assert loss.item() == pytest.approx(0.85 * (2 * -r + 2 * 0.8) / 4)  # denominator: the 4 valid tokens
    torch.testing.assert_close(grad, 0.85 * torch.tensor([[-r, 0, -r, 0, 0, 0]], dtype=torch.float64) / 4)
    assert metrics["steer/weight_mean"] == pytest.approx(0.85)
    assert metrics["steer/at_lambda_min_frac"] == 0.0


def test_steer_needs_entropies():
    batch = random_batch(0)
    del batch["entropies"]
    with pytest.raises(ValueError, match="entropies"):
        run("steer", batch)


# ---------------------------------------------------------------------------------------------------------------------
# Clip_B


def with_new_mask(filter_fn):
    """A reference loss for a token filter: plain PPO over the mask the filter returns."""
    return lambda lp, old, adv, m: (ref_ppo(lp, old, adv, new := filter_fn(old, adv, m)), new)


def test_clip_b_hand_case_removes_only_the_negative_outlier():
    # old p = 1 so S = H. S: three tokens at -10 (A = -1, +2, 0) and seven at 0; mean -3, population std sqrt(21).
    # With mu = 1 the -10 tokens sit 7 > sqrt(21) below the mean: only the A < 0 one goes. Padding S = -1000 ignored.
    adv, mask = one_row([-1.0, 2.0, 0.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, -0.5], pad=2, pad_value=-1.0)
    ent, _ = one_row([-10.0] * 3 + [0.0] * 7, pad=2, pad_value=-1000.0)
    zeros = torch.zeros_like(adv)
    batch = dict(logps=zeros, old_logps=zeros, advantages=adv, mask=mask, entropies=ent)
    edits, _ = edits_of("clip_b", batch, clip_b_mu=1.0)
    assert (~edits.keep & mask).nonzero().tolist() == [[0, 0]]
    loss, grad, metrics = run("clip_b", batch, clip_b_mu=1.0)
    kept = mask.double()
    kept[0, 0] = 0
    # Removed from the numerator AND the denominator: 9 tokens remain.
    assert loss.item() == pytest.approx(-(adv * kept).sum().item() / 9)
    torch.testing.assert_close(grad, -adv * kept / 9)
    assert metrics["clip_b/removed_frac"] == pytest.approx(1 / 10)
    assert metrics["clip_b/removed_frac/neg_adv"] == pytest.approx(1 / 5)
    assert metrics["clip_b/removed_frac/pos_adv"] == 0.0
    ref = run_ref(with_new_mask(lambda old, a, m: ref_clip_b(old, a, m, ent, 1.0)), batch)
    assert_same((loss, grad), ref)


def test_clip_b_without_spread_keeps_everything():
    # Identical S on every token (the sums are not exact in binary, so std is ~1e-17 rather than 0): nothing removed.
    adv, mask = one_row([-1.0, -2.0, 1.0, -0.5, 0.0])
    old, _ = one_row([math.log(0.37)] * 5)
    ent, _ = one_row([1.3] * 5)
    batch = dict(logps=old - 0.1, old_logps=old, advantages=adv, mask=mask, entropies=ent)
    edits, _ = edits_of("clip_b", batch, clip_b_mu=1e-3)
    assert edits.keep.all()
    assert_same(run("clip_b", batch, clip_b_mu=1e-3), run("none", batch))


@pytest.mark.parametrize("mu", [1.0, 2.5])
@pytest.mark.parametrize("seed", range(2))
def test_clip_b_random_batch_matches_reference(mu, seed):
    batch = random_batch(seed)
    ent = batch["entropies"]
    ref = run_ref(with_new_mask(lambda old, a, m: ref_clip_b(old, a, m, ent, mu)), batch)
    assert_same(run("clip_b", batch, clip_b_mu=mu), ref)
    edits, _ = edits_of("clip_b", batch, clip_b_mu=mu)
    assert torch.equal(batch["mask"] & edits.keep, ref[2].bool())
    if mu == 1.0:
        assert (batch["mask"] & ~edits.keep).any()


# ---------------------------------------------------------------------------------------------------------------------
# Clip_V


def clip_v_batch(d, adv):
    """old p = 1 and H = 0, so S = 0 and D = N = `d`. Two padding positions with D = 100 and A = -1."""
    d, mask = one_row(d, pad=2, pad_value=100.0)
    adv, _ = one_row(adv, pad=2, pad_value=-1.0)
    zeros = torch.zeros_like(d)
    return dict(logps=zeros, old_logps=zeros, advantages=adv, mask=mask, entropies=zeros, nec=d)


def test_clip_v_compares_raw_d_and_drops_zero_advantage_violators():
    # D: nine 10s and one 13 -> mean 10.3, std 0.9, mu * std = 1.8. The raw D exceeds 1.8 everywhere, so every A <= 0
    # token goes (a centred test would catch only the 13); positive-advantage tokens stay.
    batch = clip_v_batch([10.0] * 9 + [13.0], [-1.0] * 6 + [0.0, 1.0, 1.0, -1.0])
    edits, _ = edits_of("clip_v", batch, clip_v_mu=2.0, clip_v_max_frac=1.0)
    assert (edits.keep & batch["mask"]).nonzero().tolist() == [[0, 7], [0, 8]]
    loss, grad, metrics = run("clip_v", batch, clip_v_mu=2.0, clip_v_max_frac=1.0)
    assert loss.item() == pytest.approx(-1.0)
    torch.testing.assert_close(grad, torch.tensor([[0.0] * 7 + [-0.5, -0.5] + [0.0] * 3], dtype=torch.float64))
    assert metrics["clip_v/removed_frac"] == pytest.approx(8 / 10)
    assert metrics["clip_v/removed_frac/neg_adv"] == 1.0
    assert metrics["clip_v/removed_frac/pos_adv"] == 0.0


@pytest.mark.parametrize("max_frac,removed", [(0.2, [4, 5, 6]), (0.05, [5, 6]), (1.0, [0, 1, 2, 3, 4, 5, 6])])
def test_clip_v_cap_keeps_only_the_top_budget_negative_tokens(max_frac, removed):
    # D 10..15 (A < 0), 16 (A = 0), 1, 2, 3 (A > 0): mean 9.7, std 5.33; mu = 0.5 gives seven violators. Past the cap
    # only the budget = max(int(max_frac * 10), 1) largest-D negative tokens go, plus the zero-advantage violator.
    batch = clip_v_batch([10.0, 11, 12, 13, 14, 15, 16, 1, 2, 3], [-1.0] * 6 + [0.0] + [1.0] * 3)
    edits, _ = edits_of("clip_v", batch, clip_v_mu=0.5, clip_v_max_frac=max_frac)
    assert (~edits.keep & batch["mask"]).nonzero()[:, 1].tolist() == removed
    old, adv, mask = batch["old_logps"], batch["advantages"], batch["mask"]
    ref = ref_clip_v(old, adv, mask.double(), batch["entropies"], batch["nec"], 0.5, max_frac)
    assert torch.equal(mask & edits.keep, ref.bool())


@pytest.mark.parametrize("mu,max_frac", [(1.0, 1.0), (1.0, 0.01), (8.5, 1e-4)])
@pytest.mark.parametrize("seed", range(2))
def test_clip_v_random_batch_with_brute_force_n_matches_reference(mu, max_frac, seed):
    batch = random_batch(seed)  # nec from a brute-force softmax over the vocabulary
    ent, nec = batch["entropies"], batch["nec"]
    ref = run_ref(with_new_mask(lambda old, a, m: ref_clip_v(old, a, m, ent, nec, mu, max_frac)), batch)
    assert_same(run("clip_v", batch, clip_v_mu=mu, clip_v_max_frac=max_frac), ref)
    edits, _ = edits_of("clip_v", batch, clip_v_mu=mu, clip_v_max_frac=max_frac)
    assert torch.equal(batch["mask"] & edits.keep, ref[2].bool())
    if mu == 1.0:
        assert (batch["mask"] & ~edits.keep).any()


# ---------------------------------------------------------------------------------------------------------------------
# Composition, configuration errors, native switches


@pytest.mark.parametrize("spec", ["clip_b+steer", "steer+clip_b"])
def test_clip_b_plus_steer_is_the_clip_b_mask_then_steer_weights(spec):
    # STEER's min/max then spans only the tokens Clip_B keeps, as when Clip_B shrinks the mask before the loss.
    batch = random_batch(8)
    ent = batch["entropies"]
    params = dict(clip_b_mu=1.0, steer_lambda_min=0.7, steer_lambda_max=1.0, steer_mapping="linear")

    def ref(lp, old, adv, m):
        kept = ref_clip_b(old, adv, m, ent, 1.0)
        return ref_steer(lp, old, adv, kept, ref_steer_code_omega(lp.detach(), old, adv, ent), 0.7, 1.0, True)

    # In this batch Clip_B removes the token with the largest |Omega|, so the order of the two steps matters.
    adv, mask = batch["advantages"].expand_as(batch["logps"]), batch["mask"].double()
    size = ref_steer_code_omega(batch["logps"], batch["old_logps"], adv, ent).abs()
    assert size[ref_clip_b(batch["old_logps"], adv, mask, ent, 1.0) > 0].max() < size[mask > 0].max()
    ours = run(spec, batch, **params)
    assert_same(ours, run_ref(ref, batch))
    assert {"clip_b/removed_frac", "steer/weight_mean"} <= set(ours[2])


@pytest.mark.parametrize(
    "spec,named",
    [
        ("clip_cob", []),
        ("", []),
        ("clip_cov+", []),
        ("steer+steer", ["twice"]),
        ("clip_cov+steer", ["'clip_cov'", "'steer'"]),
        ("kl_cov+clip_cov", ["'kl_cov'", "'clip_cov'"]),
        ("clip_b+clip_v", ["'clip_b'", "'clip_v'"]),
        ("kl_cov+clip_higher", ["clip_higher"]),
    ],
)
def test_refused_regularizer_specs_name_the_value(spec, named):
    for build in (parse_names, get_regularizer):
        with pytest.raises(ConfigError) as info:
            build(spec)
        assert f"regularizer={spec!r}" in str(info.value)
        assert all(word in str(info.value) for word in named)


@pytest.mark.parametrize(
    "spec,names",
    [
        ("none", []),
        (" none ", []),
        ("clip_b+steer", ["clip_b", "steer"]),
        ("clip_v+kl_cov", ["clip_v", "kl_cov"]),
        ("clip_cov+clip_higher+entropy_bonus", ["clip_cov", "clip_higher", "entropy_bonus"]),
        ("high_entropy_tokens+clip_b", ["high_entropy_tokens", "clip_b"]),
    ],
)
def test_accepted_regularizer_specs(spec, names):
    assert parse_names(spec) == names
    assert get_regularizer(spec).name == ("+".join(names) or "none")


@pytest.mark.parametrize(
    "spec,params,name",
    [
        ("clip_cov", dict(kl_cov_ratio=0.1), "kl_cov_ratio"),
        ("clip_cov", dict(clip_cov_ration=0.1), "clip_cov_ration"),
        ("none", dict(steer_mapping="exp"), "steer_mapping"),
        ("clip_b+steer", dict(clip_v_mu=3.0), "clip_v_mu"),
    ],
)
def test_unknown_parameter_is_named(spec, params, name):
    with pytest.raises(ConfigError, match=re.escape(repr(name))):
        get_regularizer(spec, **params)


@pytest.mark.parametrize(
    "spec,field,value,extra",
    [
        ("clip_cov", "clip_cov_ratio", 0, {}),
        ("clip_cov", "clip_cov_ratio", 1.5, {}),
        ("clip_cov", "clip_cov_lb", 5.0, {}),
        ("kl_cov", "kl_cov_ratio", 0.0, {}),
        ("kl_cov", "kl_cov_coef", -1.0, {}),
        ("steer", "steer_mapping", "cubic", {}),
        ("steer", "steer_estimator", "fancy", {}),
        ("steer", "steer_lambda_min", 0.0, {}),
        ("steer", "steer_lambda_max", 0.5, {}),
        ("clip_b", "clip_b_mu", 0.0, {}),
        ("clip_v", "clip_v_mu", -1.0, {}),
        ("clip_v", "clip_v_max_frac", 0.0, {}),
        ("clip_b+steer", "steer_mapping", "cubic", dict(clip_b_mu=2.0)),
    ],
)
def test_invalid_parameter_values_name_field_and_value(spec, field, value, extra):
    with pytest.raises(ConfigError, match=re.escape(f"{field}={value!r}")):
        get_regularizer(spec, **{field: value}, **extra)


@pytest.mark.parametrize(
    "name,trl_option",
    [
        ("entropy_bonus", {"entropy_coef": 1e-3}),
        ("clip_higher", {"epsilon_high": 0.28}),
        ("high_entropy_tokens", {"top_entropy_quantile": 0.2}),
    ],
)
def test_native_switches_only_set_trl_options(name, trl_option):
    # At the tensor level a native switch is plain PPO: TRL applies the option itself.
    assert REGISTRY[name].kind == "native" and REGISTRY[name].trl_defaults == trl_option
    batch = random_batch(0)
    assert_same(run(name, batch), run("none", batch))


# ---------------------------------------------------------------------------------------------------------------------
# Statistics across ranks: what stat_scope=global relies on


class TwoRanks:
    """Two simulated ranks in two threads that trade tensors through a barrier, like an all-reduce / all-gather."""

    def __init__(self):
        self.barrier = threading.Barrier(2, timeout=30)
        self.slots = [None, None]

    def exchange(self, rank, x):
        self.slots[rank] = x
        self.barrier.wait()  # both tensors posted
        both = list(self.slots)
        self.barrier.wait()  # both read before either rank posts its next one
        return both

    def run(self, fn, per_rank_inputs):
        def call(rank):
            try:
                return fn(per_rank_inputs[rank], Rank(self, rank))
            except BaseException:
                self.barrier.abort()  # release the other rank instead of leaving it waiting
                raise

        with ThreadPoolExecutor(2) as pool:
            return [future.result() for future in [pool.submit(call, rank) for rank in (0, 1)]]


class Rank:
    """The Reducer one rank sees."""

    def __init__(self, world, rank):
        self.world, self.rank = world, rank

    def sum(self, x):
        a, b = self.world.exchange(self.rank, x)
        return a + b

    def max(self, x):
        return torch.maximum(*self.world.exchange(self.rank, x))

    def cat(self, x):
        a, b = self.world.exchange(self.rank, x)
        return torch.cat([a, b]), 0 if self.rank == 0 else a.numel()


@pytest.mark.parametrize(
    "spec,params,seed",
    [
        ("clip_cov", dict(clip_cov_ratio=0.02), 0),
        ("clip_cov", dict(clip_cov_ratio=0.02), 1),
        ("kl_cov", dict(kl_cov_ratio=0.05), None),
        ("steer", dict(steer_mapping="linear"), None),
        ("steer", dict(steer_mapping="exp"), None),
        ("steer", dict(steer_estimator="exact"), None),
        ("clip_b", dict(clip_b_mu=1.0), None),
        ("clip_v", dict(clip_v_mu=1.0, clip_v_max_frac=0.01), None),
        ("clip_b+steer", dict(clip_b_mu=1.0), None),
        ("clip_v+kl_cov", dict(clip_v_mu=1.0, kl_cov_ratio=0.05), None),
    ],
)
def test_two_rank_reducer_matches_local_statistics_on_the_whole_batch(spec, params, seed):
    batch = random_batch(5)
    whole, _ = edits_of(spec, batch, seed=seed, **params)
    reg = get_regularizer(spec, **params)
    halves = [{key: value[rows] for key, value in batch.items()} for rows in (slice(0, 3), slice(3, None))]

    def rank_edits(half, reduce):
        token_batch = TokenBatch(
            half["logps"], half["old_logps"], half["advantages"], half["mask"], half["entropies"], half["nec"]
        )
        return reg.edits(token_batch, reduce, None if seed is None else torch.Generator().manual_seed(seed))

    parts = TwoRanks().run(rank_edits, halves)
    selected = False
    for name in ("weight", "penalty", "keep"):
        want = getattr(whole, name)
        if want is None:
            assert all(getattr(part, name) is None for part in parts)
            continue
        got = torch.cat([getattr(part, name) for part in parts])
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
        selected |= bool((want != 1).any()) if name == "weight" else bool(want.any() != want.all())
    assert selected  # the case exercises a selection, not an all-pass
    # Metrics are local (sum, count) pairs that the trainer adds over ranks: the two ranks' must add up to the whole's.
    assert parts[0].metrics.keys() == parts[1].metrics.keys() == whole.metrics.keys()
    for key, pair in whole.metrics.items():
        got = torch.stack(parts[0].metrics[key]) + torch.stack(parts[1].metrics[key])
        torch.testing.assert_close(got, torch.stack(pair), atol=1e-9, rtol=1e-12)
