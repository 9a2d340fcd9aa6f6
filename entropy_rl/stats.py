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

from .tokens import per_token

# Vocabulary tile of the chunked pass: [tokens, VOCAB_CHUNK] is the largest logits block ever alive.
VOCAB_CHUNK = 32768
# Tokens per row block: bounds the tile to TOKEN_CHUNK x VOCAB_CHUNK fp32 (256 MiB at most).
TOKEN_CHUNK = 2048


class VocabSums:
    """Online (flash-softmax) sums of one pass over a row's logits z, in vocabulary tiles, relative to the running max.

    With d_v = z_v - m and e_v = exp(d_v): s = sum e, a = sum e d, b = sum e^2, c = sum e^2 d. Every sum is taken
    relative to m, so its terms stay O(1) whatever the size of the logits (sum e z with raw z loses |m| * 2^-24 per
    term, about 1e-5 nats at |z| ~ 125). When m grows by delta, e -> r e with r = exp(-delta) and d -> d - delta, so
    s -> r s, a -> r (a - delta s), b -> r^2 b, c -> r^2 (c - delta b): nothing is ever rounded at the scale of the
    raw logits.
    The tensors may be views into longer buffers (one token chunk of them); every update is in place.
    """

    def __init__(self, m, s, a, b, c, target):
        self.m, self.s, self.a, self.b, self.c, self.target = m, s, a, b, c, target

    @classmethod
    def empty(cls, n: int, device: torch.device | str) -> VocabSums:
        zeros = [torch.zeros(n, device=device, dtype=torch.float32) for _ in range(5)]
        return cls(torch.full((n,), -math.inf, device=device), *zeros)

    def rows(self, start: int, end: int) -> VocabSums:
        return VocabSums(*(x[start:end] for x in (self.m, self.s, self.a, self.b, self.c, self.target)))

    def fold(self, z: torch.Tensor, local_targets: torch.Tensor, raw_sum=None, scratch=None) -> None:
        """Fold one fp32 tile z [n, cols] (overwritten: its buffer is reused) of transformed logits into the sums.

        `local_targets` are the sampled ids minus the tile's first id. `raw_sum`, if given, also accumulates TRL's
        sum e z (raw logits); m, s, b and that sum are computed with exactly the operations of TRL's torch tile fold
        (trl.kernels.chunked_logprob._forward_tile), so TRL's outputs come out bit for bit. `scratch`, two
        contiguous fp32 tensors shaped like z, receive d and e; without it they are allocated. Either way at most
        three tile-sized fp32 tensors are alive (z, d, e), as in TRL's fold.
        """
        new_m = torch.maximum(self.m, z.amax(-1))
        rescale = torch.exp(self.m - new_m)
        # How far the max moved; 0 on the first tile, where the sums are 0 and m = -inf (inf * 0 would be NaN).
        delta = torch.where(self.m == -math.inf, 0.0, new_m - self.m)
        cols = z.shape[1]
        in_tile = (local_targets >= 0) & (local_targets < cols)
        target_z = z.gather(-1, local_targets.clamp(0, cols - 1).unsqueeze(-1)).squeeze(-1)
        self.target.copy_(torch.where(in_tile, target_z, self.target))
        d_out, e_out = (None, None) if scratch is None else scratch
        d = torch.sub(z, new_m.unsqueeze(-1), out=d_out)
        e = torch.exp(d, out=e_out)
        if raw_sum is not None:
            raw_sum.mul_(rescale).add_(z.mul_(e).sum(-1))
        self.a.sub_(delta * self.s).mul_(rescale).add_(torch.mul(e, d, out=z).sum(-1))
        self.s.mul_(rescale).add_(e.sum(-1))
        e.mul_(e)  # e^2 from here on
        self.c.sub_(delta * self.b).mul_(rescale * rescale).add_(d.mul_(e).sum(-1))
        self.b.mul_(rescale * rescale).add_(e.sum(-1))
        self.m.copy_(new_m)

    def finish(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log p(target), H and N. With E_p[d] = a/s and E_{p^2}[d] = c/b: H = log s - E_p[d], sum p^2 = b/s^2, and
        N = sum p^2 (log p + H) = sum p^2 (E_{p^2}[d] - E_p[d]) -- the log s terms cancel before any rounding."""
        # [N]-sized, so float64 costs nothing and keeps the final roundings (log s ~ log V ~ 12) off the result.
        s, a, b, c = (x.double() for x in (self.s, self.a, self.b, self.c))
        log_s = torch.log(s)
        mean_d = a / s
        logp = (self.target.double() - self.m.double()) - log_s
        entropy = log_s - mean_d
        nec = b / s.square() * (c / b - mean_d)
        return logp.float(), entropy.float(), nec.float()


def transform_logits(z: torch.Tensor, logit_scale: float, softcap: float | None, temperature: float) -> torch.Tensor:
    """The logit transform of TRL's fused head, in its order: scale, softcap, then temperature."""
    z = z * logit_scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return z * (1 / temperature)


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

    hidden [N, D], weight [V, D], targets [N]; returns three fp32 [N] tensors. The pure-PyTorch reference of the
    trainer's one-pass statistics (entropy_rl.onepass): an fp32 projection in tiles folded into `VocabSums`, so no
    [N, V] tensor is ever materialised.
    """
    n = hidden.shape[0]
    sums = VocabSums.empty(n, hidden.device)
    weight32 = weight.float()
    bias32 = bias.float() if bias is not None else None
    for row in range(0, n, TOKEN_CHUNK):
        h = hidden[row : row + TOKEN_CHUNK].float()
        block = sums.rows(row, row + h.shape[0])
        for start in range(0, weight32.shape[0], vocab_chunk):
            z = h @ weight32[start : start + vocab_chunk].T
            if bias32 is not None:
                z += bias32[start : start + vocab_chunk]
            block.fold(transform_logits(z, logit_scale, softcap, temperature), targets[row : row + TOKEN_CHUNK] - start)
    return sums.finish()


def discriminator(logp: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
    """S_t = p_t (H_t + log p_t): the first-order entropy change when the sampled token's logit alone goes up by -1."""
    return logp.exp() * (entropy + logp)


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
    a = per_token(advantages, lp).double()
    d = (S - N).double()
    update = a if update_advantages is None else per_token(update_advantages, lp).double()
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
