"""One host-device synchronisation per optimizer step, whatever the method, and token selection that never waits."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from entropy_rl.regularizers.common import DrawStream, top_ranked

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))
import host_syncs  # noqa: E402


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_draw_stream_takes_randperms_draws_across_calls_and_settles_the_generator_exactly(seed):
    """Several selections before one settle draw what successive randperm calls draw, and leave the generator where
    they leave it (the next draw after the step agrees too)."""
    sizes = [0, 1, 7, 2, 30, 5]
    plain = torch.Generator().manual_seed(seed)
    want = [torch.randperm(n, generator=plain)[:3] for n in sizes]
    stream = DrawStream(torch.Generator().manual_seed(seed))
    got = [stream.permutation_prefix(torch.tensor(n), 3, 40)[: min(n, 3)] for n in sizes]
    assert stream.consumed.item() == sum(max(n - 1, 0) for n in sizes)
    stream.settle(int(stream.consumed))
    for a, b in zip(got, want, strict=True):
        assert a.tolist() == b.tolist()
    assert torch.equal(torch.rand(4, generator=stream.generator), torch.rand(4, generator=plain))


def test_top_ranked_takes_a_device_count_below_its_bound():
    flat = torch.tensor([0.5, 3.0, -1.0, 2.0, 9.0, -torch.inf])
    assert top_ranked(flat, torch.tensor(2), 4).tolist() == [False, True, False, False, True, False]
    assert top_ranked(flat, torch.tensor(0), 4).sum() == 0
    assert top_ranked(flat[:0], torch.tensor(1), 3).numel() == 0


@pytest.mark.slow
@pytest.mark.parametrize("method", host_syncs.methods())
def test_one_host_sync_per_optimizer_step(method):
    """Counted at the points that would wait on a device (host reads, data-sized outputs, boolean-mask indexing),
    2 micro-batches per step; TRL's own synchronisations are TRL's and not counted here."""
    syncs = host_syncs.count(method, steps=2, device="cpu")
    per_step = syncs.per_step()
    assert set(per_step) == {1, 2}
    assert max(per_step.values()) <= 1, syncs.sites()
    # The counter sees synchronisations at all: TRL's own are there every step.
    assert all(syncs.per_step("trl").values())
