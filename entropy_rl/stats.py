"""Token-dynamics statistics: pure tensor code, no trainer imports.

Notation (all [B, T] unless noted; see docs/metrics.md): p_t is the probability of the sampled token, H_t the entropy of
the next-token distribution at the sampling temperature, S_t = p_t (H_t + log p_t) the entropy discriminator of the
sampled token and N_t = sum_v p_v^2 (log p_v + H_t) = E_{v~p}[S_v] its policy average. A logit step of size eta along
the sampled-token gradient changes the entropy by -eta A_t ratio_t 1[unclipped_t] (S_t - N_t) to first order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# Vocabulary tile of the chunked pass: [tokens, VOCAB_CHUNK] is the largest logits block ever alive.
VOCAB_CHUNK = 32768
# Tokens per row block: bounds the tile to TOKEN_CHUNK x VOCAB_CHUNK fp32 (256 MiB at most).
TOKEN_CHUNK = 2048


@torch.no_grad()
def vocab_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    vocab_chunk: int = VOCAB_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-prob of `targets`, entropy H and N = sum_v p_v^2 (log p_v + H) of softmax(hidden @ weight.T / temperature).

    hidden [N, D], weight [V, D], targets [N]; returns three fp32 [N] tensors. One pass over the vocabulary in tiles
    with online rescaling (the flash-softmax trick), so no [N, V] tensor is ever materialised. With e_v = exp(z_v - m):
    H = log Z - sum e z / sum e, sum p^2 = sum e^2 / (sum e)^2, sum p^2 log p = sum e^2 z / (sum e)^2 - log Z sum p^2.
    """
    n = hidden.shape[0]
    out_logp, out_entropy, out_n = (torch.empty(n, device=hidden.device, dtype=torch.float32) for _ in range(3))
    weight32 = weight.float()
    bias32 = bias.float() if bias is not None else None
    for row in range(0, n, TOKEN_CHUNK):
        h = hidden[row : row + TOKEN_CHUNK].float()
        tgt = targets[row : row + TOKEN_CHUNK]
        m = torch.full((h.shape[0],), -math.inf, device=h.device)
        sum_e, sum_ez, sum_e2, sum_e2z = (torch.zeros(h.shape[0], device=h.device) for _ in range(4))
        target_z = torch.zeros(h.shape[0], device=h.device)
        for start in range(0, weight32.shape[0], vocab_chunk):
            z = h @ weight32[start : start + vocab_chunk].T
            if bias32 is not None:
                z += bias32[start : start + vocab_chunk]
            z *= logit_scale
            if softcap is not None:
                z = softcap * torch.tanh(z / softcap)
            z /= temperature
            new_m = torch.maximum(m, z.amax(-1))
            scale = torch.exp(m - new_m)
            e = torch.exp(z - new_m[:, None])
            sum_e = sum_e * scale + e.sum(-1)
            sum_ez = sum_ez * scale + (e * z).sum(-1)
            e2 = e * e
            sum_e2 = sum_e2 * scale * scale + e2.sum(-1)
            sum_e2z = sum_e2z * scale * scale + (e2 * z).sum(-1)
            m = new_m
            local = tgt - start
            in_tile = (local >= 0) & (local < z.shape[1])
            target_z = torch.where(in_tile, z.gather(1, local.clamp(0, z.shape[1] - 1)[:, None])[:, 0], target_z)
        # Quantities relative to the running max m keep every exponent <= 0; shift z back by m where it appears.
        log_z = torch.log(sum_e)  # log partition of z - m
        entropy = log_z - (sum_ez / sum_e - m)
        sum_p2 = sum_e2 / sum_e**2
        sum_p2_logp = (sum_e2z / sum_e**2 - m * sum_p2) - log_z * sum_p2
        block = slice(row, row + h.shape[0])
        out_logp[block] = target_z - m - log_z
        out_entropy[block] = entropy
        out_n[block] = entropy * sum_p2 + sum_p2_logp
    return out_logp, out_entropy, out_n


def discriminator(logp: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
    """S_t = p_t (H_t + log p_t): the first-order entropy change when the sampled token's logit alone goes up by -1."""
    return logp.exp() * (entropy + logp)


def unclipped_mask(
    ratio: torch.Tensor, advantages: torch.Tensor, epsilon_low: float, epsilon_high: float
) -> torch.Tensor:
    """1 where the PPO-clipped surrogate still passes gradient (the min picks the unclipped branch)."""
    low = (ratio < 1 - epsilon_low) & (advantages < 0)
    high = (ratio > 1 + epsilon_high) & (advantages > 0)
    return ~(low | high)


# Order of the entries of the per-step sum vector; `step_metrics` reads them by name.
SUM_FIELDS = (
    # per-token sums
    "tokens",
    "entropy",
    "logp",
    "adv",
    "logp_adv",
    "logp_sq",
    "adv_sq",
    "S",
    "N",
    "pred_dH",
    "pos_adv_S_gt_N",
    "pos_adv_S_lt_N",
    "neg_adv_S_gt_N",
    "neg_adv_S_lt_N",
    "zero_adv",
    # per-sequence sums
    "seq_entropy",
    "sequences",
)


def per_token(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sequence [B] or [B, 1] values (GRPO advantages) broadcast to float64 [B, T]."""
    values = values[:, None] if values.dim() == 1 else values
    return values.double().expand_as(like)


def token_sums(
    *,
    logp: torch.Tensor,
    entropy: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    S: torch.Tensor,
    N: torch.Tensor,
    ratio: torch.Tensor,
    unclipped: torch.Tensor,
    update_advantages: torch.Tensor | None = None,
) -> torch.Tensor:
    """Additive sufficient statistics of one micro-batch, a float64 vector ordered as SUM_FIELDS.

    Sums (not means) so that micro-batches and ranks combine exactly with one all-reduce per optimizer step.
    `update_advantages` (default: `advantages`) are the per-token advantages the update really uses, e.g. after a
    regularizer's weights; the predicted entropy change follows them, the covariance and quadrants the raw ones.
    """
    m = mask.to(torch.float64)
    lp, h = logp.double(), entropy.double()
    a = per_token(advantages, lp)
    d = (S - N).double()
    update = a if update_advantages is None else per_token(update_advantages, lp)
    pred = update * ratio.double() * unclipped.double() * d
    pos, neg, up = a > 0, a < 0, d > 0
    # One stacked reduction instead of one per statistic: the same numbers, a fraction of the kernel launches.
    per_token_values = torch.stack(
        [torch.ones_like(lp), h, lp, a, lp * a, lp * lp, a * a, S.double(), N.double(), pred]
        + [(x & y).double() for x, y in ((pos, up), (pos, ~up), (neg, up), (neg, ~up))]
        + [(a == 0).double()]
    )
    seq_tokens = m.sum(-1)
    has_tokens = (seq_tokens > 0).double()
    seq_mean = (h * m).sum(-1) / seq_tokens.clamp(min=1)
    per_sequence = torch.stack([(seq_mean * has_tokens).sum(), has_tokens.sum()])
    return torch.cat([(per_token_values * m).sum(dim=(-2, -1)), per_sequence])


def step_metrics(sums: torch.Tensor | Sequence[float]) -> dict[str, float]:
    """Metrics of one optimizer step from the globally reduced SUM_FIELDS vector. NaN-free: empty steps give zeros."""
    values = sums.double().tolist() if isinstance(sums, torch.Tensor) else list(sums)
    s = dict(zip(SUM_FIELDS, values, strict=True))
    n = s["tokens"]
    if n == 0:
        return {"tokens": 0.0}

    def mean(key: str) -> float:
        return s[key] / n

    cov = mean("logp_adv") - mean("logp") * mean("adv")
    var_lp = max(mean("logp_sq") - mean("logp") ** 2, 0.0)
    var_a = max(mean("adv_sq") - mean("adv") ** 2, 0.0)
    denom = math.sqrt(var_lp * var_a)
    return {
        "tokens": n,
        "entropy/token_mean": mean("entropy"),
        "entropy/seq_mean": s["seq_entropy"] / max(s["sequences"], 1.0),
        "cov/logp_adv": cov,
        "cov/corr_logp_adv": cov / denom if denom > 0 else 0.0,
        "logp/mean": mean("logp"),
        "discriminator/S_mean": mean("S"),
        "discriminator/N_mean": mean("N"),
        "dynamics/predicted_dH": -mean("pred_dH"),
        "quadrant/pos_adv_S_gt_N": mean("pos_adv_S_gt_N"),
        "quadrant/pos_adv_S_lt_N": mean("pos_adv_S_lt_N"),
        "quadrant/neg_adv_S_gt_N": mean("neg_adv_S_gt_N"),
        "quadrant/neg_adv_S_lt_N": mean("neg_adv_S_lt_N"),
        "quadrant/zero_adv": mean("zero_adv"),
    }


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Pearson correlation, None when undefined (fewer than 3 pairs or a constant series)."""
    if len(xs) < 3:
        return None
    x, y = torch.tensor(xs, dtype=torch.float64), torch.tensor(ys, dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = (x.square().sum() * y.square().sum()).sqrt()
    return float((x * y).sum() / denom) if denom > 0 else None
