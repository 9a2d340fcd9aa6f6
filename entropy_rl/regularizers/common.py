"""Token statistics several methods share: covariance ranking (Clip-Cov, KL-Cov), outlier spread (Clip_B, Clip_V), and
token selection that never waits for the device (top-k and random draws whose count is known only there)."""

from __future__ import annotations

import torch

from ..tokens import TokenBatch
from .base import Reducer, masked_mean

DEGENERATE_STD = 1e-12  # below this the batch has no spread to measure outliers against: keep everything
WORD = 0xFFFFFFFF


def token_covariance(batch: TokenBatch, reduce: Reducer) -> torch.Tensor:
    """Centered product of advantage and (detached) log-prob, the statistic Clip-Cov and KL-Cov rank tokens by."""
    logps, adv, mask = batch.logps.detach(), batch.advantages, batch.mask
    return (adv - masked_mean(adv, mask, reduce)) * (logps - masked_mean(logps, mask, reduce))


def spread(x: torch.Tensor, mask: torch.Tensor, reduce: Reducer) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population standard deviation of x over the valid tokens."""
    mean = masked_mean(x, mask, reduce)
    return mean, masked_mean((x - mean) ** 2, mask, reduce).sqrt()


def top_ranked(flat: torch.Tensor, count: torch.Tensor, bound: int) -> torch.Tensor:
    """Boolean mask of the `count` largest entries of 1-D `flat`, where `count` (a device scalar) is at most the host
    integer `bound`: top-`bound` on the device, then the first `count` of them, so no size goes to the host."""
    bound = min(bound, flat.numel())
    chosen = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
    if bound:
        top = torch.topk(flat, bound)  # sorted, largest first
        chosen[top.indices] = torch.arange(bound, device=flat.device) < count
    return chosen


class DrawStream:
    """The 32-bit words of a CPU torch.Generator in the order `torch.randperm` consumes them, read on the device at a
    position known only there.

    randperm(n) on the CPU is a Fisher-Yates shuffle that takes one word w_i per step i < n - 1 and swaps position i
    with i + w_i mod (n - i). Its first k entries depend only on n and w_0..w_{k-1}, so they can be computed on the
    device from a window of words when n is a device tensor; the generator has then consumed max(n - 1, 0) words,
    a count the host learns at the step's one synchronisation (`settle`). Until then the words come from a copy of
    the generator, and the generator itself is advanced by exactly what was consumed: the draws equal randperm's.
    """

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = torch.default_generator if generator is None else generator
        self._restart()

    def _restart(self) -> None:
        self._source: torch.Generator | None = None  # a copy of the generator, taken at the first draw
        self._words = torch.empty(0, dtype=torch.int64)  # drawn from `_source` since the last settle
        self._device_words: torch.Tensor | None = None
        self.consumed: torch.Tensor | None = None  # words used since the last settle, on the device
        self._bound = 0  # host upper bound of `consumed`

    def _window(self, size: int, device: torch.device) -> torch.Tensor:
        """Words consumed + 0 .. consumed + size - 1, on `device`."""
        needed = self._bound + size - len(self._words)
        if needed > 0:
            if self._source is None:
                self._source = torch.Generator().set_state(self.generator.get_state())
            # random_ over the full int64 range returns the generator's random64() = (w_2j << 32) | w_2j+1.
            pairs = torch.empty((needed + 1) // 2, dtype=torch.int64).random_(-(2**63), None, generator=self._source)
            self._words = torch.cat([self._words, torch.stack([(pairs >> 32) & WORD, pairs & WORD], -1).flatten()])
        stale = self._device_words is None or self._device_words.device != device
        if stale or len(self._device_words) < len(self._words):
            self._device_words = self._words.to(device)
        start = torch.zeros((), dtype=torch.int64, device=device) if self.consumed is None else self.consumed
        return self._device_words[start + torch.arange(size, device=device)]

    def permutation_prefix(self, n: torch.Tensor, bound: int, n_bound: int) -> torch.Tensor:
        """The first `bound` entries of randperm(n), n a device scalar <= n_bound (entries at i >= n mean nothing)."""
        device = n.device
        words = self._window(bound, device)
        perm = torch.arange(max(n_bound, bound), device=device)
        for i in range(bound):
            span = (n - i).clamp(min=1)
            z = torch.where(i < n - 1, i + words[i] % span, i).reshape(1)
            here, there = perm[i : i + 1].clone(), perm[z]
            perm[i : i + 1] = there
            perm.index_copy_(0, z, here)
        used = (n - 1).clamp(min=0)
        self.consumed = used if self.consumed is None else self.consumed + used
        self._bound += max(n_bound - 1, 0)
        return perm[:bound]

    # The generator's interface where a caller reseeds, saves or restores it: pending draws are dropped or settled.
    def manual_seed(self, seed: int) -> DrawStream:
        self.generator.manual_seed(seed)
        self._restart()
        return self

    def get_state(self) -> torch.Tensor:
        if self.consumed is not None:
            self.settle()
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> DrawStream:
        self.generator.set_state(state)
        self._restart()
        return self

    def settle(self, consumed: int | None = None) -> None:
        """Advance the generator by the words used since the last settle (read from the device if not given)."""
        if consumed is None:
            consumed = 0 if self.consumed is None else int(self.consumed)
        if consumed:
            torch.randint(0, 2, (consumed,), generator=self.generator)  # one word per entry: range < 2^32
        self._restart()
