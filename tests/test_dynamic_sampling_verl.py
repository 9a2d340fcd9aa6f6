"""Dynamic sampling and overlong shaping against verl 0.9.1's DAPO trainer, on constructed batches (no verl import).

`verl_fill` below is the filter loop of verl's recipe/dapo/dapo_ray_trainer.py (RayDAPOTrainer.fit), reduced to what
decides the batch: per generation batch, the metric values of each prompt's group (uid); a group is kept when
np.std of its values > 0 or it has one member; kept groups are appended in generation order; while fewer prompts than
train_batch_size are kept, generation goes on if max_num_gen_batches <= 0 or fewer batches than it were generated,
else ValueError; once enough, the batch is cut to train_batch_size prompts. `verl_overlong` is DAPORewardManager's
overlong term. Each test feeds the same constructed rounds to entropy-rl's pure functions (entropy_rl.dynamic_sampling,
the ones the trainer calls) and to the reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from trl.trainer.grpo_trainer import RepeatSampler

from entropy_rl.dynamic_sampling import (
    PromptStream,
    cap_error,
    collect_rounds,
    groups_with_spread,
    metric_column,
    select_rows,
)
from entropy_rl.errors import ConfigError, DynamicSamplingError
from entropy_rl.rewards import soft_overlong_punishment

G = 4  # completions per prompt


def verl_fill(rounds: list[list[list[float]]], train_batch_size: int, max_num_gen_batches: int):
    """(kept (round, group) pairs cut to the batch, generation batches used); ValueError at the cap, as verl."""
    batch: list[tuple[int, int]] = []
    num_prompt_in_batch = num_gen_batches = 0
    for round_index, groups in enumerate(rounds):
        num_gen_batches += 1
        kept = [g for g, values in enumerate(groups) if np.std(values) > 0 or len(values) == 1]
        num_prompt_in_batch += len(kept)
        batch += [(round_index, g) for g in kept]
        if num_prompt_in_batch < train_batch_size:
            if max_num_gen_batches <= 0 or num_gen_batches < max_num_gen_batches:
                continue
            raise ValueError(f"{num_gen_batches=} >= {max_num_gen_batches=}.")
        return batch[:train_batch_size], num_gen_batches
    raise AssertionError("the constructed rounds ran out")


def ours(rounds_rewards: list[torch.Tensor], metric: str, names: list[str], prompts: int, max_rounds: int):
    """The trainer's decision (sampling.py) on per-round (rows, functions) rewards: kept (round, group), rounds."""
    column = metric_column(metric, names)
    weights = torch.ones(len(names))
    feed = iter(rounds_rewards)

    def next_round() -> torch.Tensor:
        rewards = next(feed)
        if column is None:
            return groups_with_spread(rewards, weights, G, per_function=False)
        return groups_with_spread(rewards[:, column : column + 1], weights[:1], G, per_function=True)

    spreads, capped = collect_rounds(next_round, G, prompts * G, max_rounds)
    selection = select_rows(spreads, G, prompts * G, divisor=1, capped=capped)
    if capped:
        raise cap_error(selection, prompts * G, G, metric, max_rounds)
    kept = [(r, row // G) for r, row in selection.rows[::G]]  # members of a group are consecutive
    return kept, selection.rounds


def rounds_from(accuracy: list[list[list[float]]], lengths_penalty: list[list[list[float]]] | None = None):
    """Per round a (rows, 2) tensor: column 0 the accuracy reward, column 1 the overlong punishment (0 if None)."""
    out = []
    for r, groups in enumerate(accuracy):
        acc = torch.tensor([v for group in groups for v in group])
        pen = (
            torch.zeros_like(acc)
            if lengths_penalty is None
            else torch.tensor([v for g in lengths_penalty[r] for v in g])
        )
        out.append(torch.stack([acc, pen], dim=1))
    return out


RIGHT, WRONG, MIXED = [1.0] * G, [0.0] * G, [1.0, 0.0, 0.0, 1.0]


def test_binary_accuracy_keeps_the_groups_verl_keeps_in_its_order():
    # Case: 3 rounds of 4 groups; rounds keep 1, 2 and 3 groups with mixed answers; a batch needs 4 prompts, so the
    # third round completes it and its last mixed group is cut off (verl: batch[:traj_bsz]).
    accuracy = [
        [RIGHT, MIXED, WRONG, RIGHT],
        [MIXED, WRONG, [0.0, 0.0, 0.0, 1.0], RIGHT],
        [[1.0, 1.0, 1.0, 0.0], MIXED, WRONG, MIXED],
    ]
    expected, used = verl_fill(accuracy, train_batch_size=4, max_num_gen_batches=10)
    assert (expected, used) == ([(0, 1), (1, 0), (1, 2), (2, 0)], 3)
    assert ours(rounds_from(accuracy), "acc", ["acc", "overlong"], 4, 10) == (expected, used)


def test_acc_metric_drops_groups_that_differ_only_in_length_as_verl_and_reward_keeps_them_as_seq_reward():
    # Case: every group all right or all wrong, but one completion per group runs into the overlong buffer
    # (punishment -0.5). verl with filter_groups.metric=acc drops all of them; with seq_reward (score + overlong)
    # it keeps all. Round 2 has two mixed groups, which both metrics keep.
    accuracy = [[RIGHT, WRONG, RIGHT, WRONG], [MIXED, RIGHT, MIXED, WRONG]]
    penalty = [[[0.0, 0.0, -0.5, 0.0]] * 4, [[0.0] * G] * 4]
    seq_reward = [[[a + p for a, p in zip(ga, gp, strict=True)] for ga, gp in zip(ra, rp, strict=True)]
                  for ra, rp in zip(accuracy, penalty, strict=True)]  # fmt: skip
    rounds = rounds_from(accuracy, penalty)
    by_acc = verl_fill(accuracy, train_batch_size=2, max_num_gen_batches=10)
    assert by_acc == ([(1, 0), (1, 2)], 2)
    assert ours(rounds, "acc", ["acc", "overlong"], 2, 10) == by_acc
    assert ours(rounds, "acc_reward", ["acc_reward", "overlong"], 2, 10) == by_acc  # by name: the same column
    by_sum = verl_fill(seq_reward, train_batch_size=2, max_num_gen_batches=10)
    assert by_sum == ([(0, 0), (0, 1)], 1)
    assert ours(rounds, "reward", ["acc", "overlong"], 2, 10) == by_sum


def test_the_cap_raises_after_as_many_rounds_as_verl_and_zero_means_no_cap():
    # Case: 12 rounds in which only every fourth keeps one group; a batch needs 3 groups (rounds 4, 8, 12).
    accuracy = [[MIXED if (r + 1) % 4 == 0 and g == 0 else RIGHT for g in range(4)] for r in range(12)]
    rounds = rounds_from(accuracy)
    for cap in (1, 5, 11):
        with pytest.raises(ValueError, match=f"num_gen_batches={cap} >= max_num_gen_batches={cap}"):
            verl_fill(accuracy, 3, cap)
        with pytest.raises(DynamicSamplingError, match=f"{cap} generation rounds .*kept {cap // 4} of the 3 groups"):
            ours(rounds, "acc", ["acc", "overlong"], 3, cap)
    assert (
        verl_fill(accuracy, 3, 12) == ours(rounds, "acc", ["acc", "overlong"], 3, 12) == ([(3, 0), (7, 0), (11, 0)], 12)
    )
    assert verl_fill(accuracy, 3, 0) == ours(rounds, "acc", ["acc", "overlong"], 3, 0)  # no cap: as many as it takes


def test_the_cap_error_is_one_line_naming_the_settings():
    spreads, capped = collect_rounds(lambda: torch.tensor([False, True]), 2, target_rows=8, max_rounds=2)
    assert capped and len(spreads) == 2
    error = str(cap_error(select_rows(spreads, 2, 8, 1, capped), 8, 2, "acc", 2))
    assert "\n" not in error and "dynamic_sampling_max_rounds=2" in error and "dynamic_sampling_at_cap='train'" in error


def test_unknown_metric_is_refused_with_the_reward_names():
    assert metric_column("acc", ["math_reward"]) == 0 and metric_column("reward", ["math_reward"]) is None
    assert metric_column("soft_overlong_punishment_reward", ["math_reward", "soft_overlong_punishment_reward"]) == 1
    with pytest.raises(ConfigError, match=r"dynamic_sampling_metric='score'.*\['math_reward'\]"):
        metric_column("score", ["math_reward"])


def verl_overlong(valid_response_length: int, max_resp_len: int, buffer_len: int, factor: float) -> float:
    expected_len = max_resp_len - buffer_len
    exceed_len = valid_response_length - expected_len
    return min(-exceed_len / buffer_len * factor, 0)


@pytest.mark.parametrize("factor", [0.5, 1.0, 2.0])
def test_overlong_punishment_equals_verls_for_every_length(factor):
    # Case: every response length 0..max_resp_len (a response cannot be longer), buffer 16 of 64, three factors.
    reward = soft_overlong_punishment(64, 16, factor)
    lengths = list(range(65))
    got = reward(completion_ids=[[7] * n for n in lengths])
    assert got == pytest.approx([verl_overlong(n, 64, 16, factor) for n in lengths], abs=1e-12)
    assert reward.__name__ == "soft_overlong_punishment_reward"  # logged as rewards/soft_overlong_punishment_reward


def test_the_prompt_stream_is_the_data_loaders_order_without_repeats_within_an_epoch():
    # Case: 10 prompts, 3 per round (the last incomplete chunk of each epoch is dropped, as TRL's sampler does);
    # verl's rounds take the next batches of its data loader: the stream is the epochs' orders one after another.
    dataset, prompts, seed = list(range(10)), 3, 7
    loader = RepeatSampler(dataset, mini_repeat_count=G, batch_size=prompts, repeat_count=2, seed=seed)
    first_epoch = list(loader)[:: G * 2 * prompts]  # TRL's training loader: each chunk repeated, each prompt G times
    stream = PromptStream(RepeatSampler(dataset, 1, batch_size=prompts, seed=seed))
    rounds = [stream.take(prompts) for _ in range(6)]
    epoch_one = [i for r in rounds[:3] for i in r]
    assert [r[0] for r in rounds[:3]] == first_epoch, "the stream's first epoch is the loader's"
    assert len(set(epoch_one)) == 9, "no prompt twice within an epoch"
    assert len(set(i for r in rounds[3:] for i in r)) == 9, "the next epoch: a new permutation, again no repeat"
    # A resumed run (position from the checkpoint) goes on with the same prompts.
    resumed = PromptStream(RepeatSampler(dataset, 1, batch_size=prompts, seed=seed), position=4 * prompts)
    assert [resumed.take(prompts) for _ in range(2)] == rounds[4:]


def test_a_dataset_smaller_than_a_round_is_refused():
    with pytest.raises(ConfigError, match="fewer training prompts than one batch"):
        PromptStream(RepeatSampler([0, 1], 1, batch_size=3, seed=0)).take(3)
