"""The diagnostics' formulas against brute force: full softmax on a small vocabulary and finite differences."""

import math

import pytest
import torch

from entropy_rl import stats, tokens


def brute_force(hidden, weight, targets, temperature=1.0, softcap=None, scale=1.0, bias=None):
    z = hidden.double() @ weight.double().T
    if bias is not None:
        z = z + bias.double()
    z = z * scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    logp_all = torch.log_softmax(z / temperature, dim=-1)
    p = logp_all.exp()
    entropy = -(p * logp_all).sum(-1)
    s_all = p * (logp_all + entropy[:, None])  # S_v for every candidate token v
    n = (p * s_all).sum(-1)
    return logp_all.gather(1, targets[:, None])[:, 0], entropy, n


@pytest.mark.parametrize(
    "temperature,softcap,scale,chunk", [(1.0, None, 1.0, 7), (0.6, None, 1.0, 5), (1.3, 3.0, 0.5, 64)]
)
def test_vocab_stats_matches_full_softmax(temperature, softcap, scale, chunk):
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(37, 16, generator=g) * 2, torch.randn(23, 16, generator=g)
    bias = torch.randn(23, generator=g)
    targets = torch.randint(0, 23, (37,), generator=g)
    got = stats.vocab_stats(
        hidden,
        weight,
        targets,
        bias=bias,
        temperature=temperature,
        logit_scale=scale,
        softcap=softcap,
        vocab_chunk=chunk,
    )
    want = brute_force(hidden, weight, targets, temperature, softcap, scale, bias)
    for g_, w_ in zip(got, want, strict=True):
        torch.testing.assert_close(g_.double(), w_, atol=2e-5, rtol=1e-5)


def test_vocab_stats_survives_huge_logits():
    # A near-deterministic distribution (entropy ~ 0) must not produce NaN or inf.
    hidden = torch.tensor([[100.0, 0.0], [0.0, 0.0]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    logp, entropy, n = stats.vocab_stats(hidden, weight, torch.tensor([0, 2]), vocab_chunk=2)
    assert torch.isfinite(torch.stack([logp, entropy, n])).all()
    assert entropy[0].abs() < 1e-6 and logp[0].abs() < 1e-6
    assert entropy[1] == pytest.approx(math.log(3), abs=1e-6)


def entropy_of(z):
    logp = torch.log_softmax(z, -1)
    return -(logp.exp() * logp).sum()


def test_discriminator_predicts_single_logit_change():
    # dH/dz_k = -S_k: raising one logit by eps changes H by -eps * S_k to first order.
    z = torch.randn(11, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    logp, h = torch.log_softmax(z, -1), entropy_of(z)
    eps = 1e-6
    for k in range(11):
        dz = torch.zeros_like(z)
        dz[k] = eps
        measured = (entropy_of(z + dz) - h).item()
        predicted = -eps * stats.discriminator(logp[k], h).item()
        assert measured == pytest.approx(predicted, rel=1e-4, abs=1e-12)


def test_policy_gradient_step_predicted_by_s_minus_n():
    # A sampled-token step dz = eta * A * (e_k - p) changes H by -eta * A * (S_k - N) (the diagnostic's formula).
    z = torch.randn(9, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    logp = torch.log_softmax(z, -1)
    p, h = logp.exp(), entropy_of(z)
    n = (p * stats.discriminator(logp, h)).sum()
    eta = 1e-6
    for k, adv in [(0, 1.3), (4, -0.7), (8, 2.0)]:
        onehot = torch.nn.functional.one_hot(torch.tensor(k), 9).double()
        measured = (entropy_of(z + eta * adv * (onehot - p)) - h).item()
        predicted = -eta * adv * (stats.discriminator(logp[k], h) - n).item()
        assert measured == pytest.approx(predicted, rel=1e-4)


def test_token_sums_step_metrics_matches_direct_formulas():
    g = torch.Generator().manual_seed(3)
    logp = -torch.rand(4, 6, generator=g) * 3
    entropy = torch.rand(4, 6, generator=g)
    adv = torch.tensor([1.0, -0.5, 0.0, 2.0])[:, None]
    mask = torch.ones(4, 6)
    mask[1, 3:] = 0
    mask[2, 1:] = 0
    s_, n_ = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    ratio = 1 + 0.3 * torch.randn(4, 6, generator=g)
    unclipped = tokens.unclipped_mask(ratio, adv, 0.2, 0.28)
    # Two micro-batches summed must equal one pass over all rows.
    parts = [
        stats.token_sums(
            logp=logp[r],
            entropy=entropy[r],
            advantages=adv[r],
            mask=mask[r],
            S=s_[r],
            N=n_[r],
            ratio=ratio[r],
            unclipped=unclipped[r],
        )
        for r in (slice(0, 1), slice(1, 4))
    ]
    got = stats.step_metrics(parts[0] + parts[1])

    valid = mask.bool()
    a = adv.expand(4, 6)[valid].double()
    lp, h = logp[valid].double(), entropy[valid].double()
    d = (s_ - n_)[valid].double()
    assert got["tokens"] == valid.sum().item()
    assert got["entropy/token_mean"] == pytest.approx(h.mean().item())
    seq_means = [entropy[i][valid[i]].double().mean().item() for i in range(4)]
    assert got["entropy/seq_mean"] == pytest.approx(sum(seq_means) / 4)
    assert got["cov/logp_adv"] == pytest.approx(((lp - lp.mean()) * (a - a.mean())).mean().item())
    corr = torch.corrcoef(torch.stack([lp, a]))[0, 1].item()
    assert got["cov/corr_logp_adv"] == pytest.approx(corr, rel=1e-6)
    pred = -(a * ratio[valid].double() * unclipped[valid].double() * d).mean().item()
    assert got["dynamics/predicted_dH"] == pytest.approx(pred)
    quadrants = [k for k in got if k.startswith("quadrant/")]
    assert sum(got[k] for k in quadrants) == pytest.approx(1.0)
    assert got["quadrant/zero_adv"] == pytest.approx(1 / valid.sum().item())


def test_unclipped_mask_follows_ppo_min():
    ratio = torch.tensor([0.5, 0.5, 1.5, 1.5, 1.0])
    adv = torch.tensor([-1.0, 1.0, 1.0, -1.0, 1.0])
    assert tokens.unclipped_mask(ratio, adv, 0.2, 0.28).tolist() == [False, True, False, True, True]


def test_step_metrics_empty_step_is_nan_free():
    assert stats.step_metrics(torch.zeros(len(stats.SUM_FIELDS), dtype=torch.float64)) == {"tokens": 0.0}


def test_pearson():
    assert stats.pearson([1, 2], [1, 2]) is None
    assert stats.pearson([1, 1, 1], [1, 2, 3]) is None
    assert stats.pearson([1, 2, 3, 4], [2, 4, 6, 8.5]) == pytest.approx(0.9989, abs=1e-3)
