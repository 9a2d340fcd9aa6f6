"""DAPO's dynamic sampling (filter_groups, arXiv:2503.14476), as pure code for the trainer.

A GRPO group whose rewards are all equal has zero advantages: it adds tokens to the loss's denominator but no signal.
DAPO drops such groups and generates more prompts until the batch is full again. Here a rollout batch is TRL's
output dict of one generation round (each process holds `L` consecutive rows of the global batch, groups are
`num_generations` consecutive global rows and may straddle processes); the decision is taken on the global rewards,
so every process keeps the same groups and runs the same number of rounds. The semantics are those of verl's DAPO
trainer (recipe/dapo/dapo_ray_trainer.py): a group is kept when its metric is not the same for every member; rounds
go on while fewer groups than the batch needs are kept and the round cap (0: none) is not reached; at the cap verl
raises; the kept groups are cut to the batch in the order they were generated; each round takes the next prompts of
the data loader's order. tests/test_dynamic_sampling.py compares each rule with verl's on constructed batches.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ConfigError, DynamicSamplingError

# Keys of TRL's rollout dict that dynamic sampling knows how to cut and join (multimodal keys are not among them).
PROMPT_KEYS = ("prompt_ids", "prompt_mask")
ROW_KEYS = (
    "completion_ids",
    "completion_mask",
    "advantages",
    "old_per_token_logps",
    "importance_sampling_ratio",
    "sampling_per_token_logps",
    "ref_per_token_logps",
    "tool_mask",
)
RECOUNTED_KEYS = ("num_items_in_batch",)


def metric_column(metric: str, reward_names: Sequence[str]) -> int | None:
    """The column of TRL's (rows, functions) rewards that groups are filtered on, for dynamic_sampling_metric:
    'acc' the first reward function (verl's filter_groups.metric=acc: the task's accuracy), a reward function's
    name that one, 'reward' None (the weighted sum TRL normalises, as verl's seq_reward)."""
    if metric == "reward":
        return None
    if metric == "acc":
        return 0
    if metric not in reward_names:
        raise ConfigError(
            f"invalid config: dynamic_sampling_metric={metric!r}; allowed: 'acc' (the first reward function), "
            f"'reward' (their weighted sum) or one of the reward functions {list(reward_names)}"
        )
    return list(reward_names).index(metric)


def groups_with_spread(
    rewards_per_func: torch.Tensor, weights: torch.Tensor, num_generations: int, per_function: bool
) -> torch.Tensor:
    """Bool per group: do its rewards differ? `rewards_per_func` is TRL's global (rows, functions) tensor (NaN where
    a function returned None). With `per_function` (TRL's normalize_then_sum) any function's spread counts; else the
    spread of the weighted sum TRL normalises (sum_then_normalize). A group with no scorable row has none."""
    if per_function:
        values = rewards_per_func.view(-1, num_generations, rewards_per_func.size(1))
    else:
        total = (rewards_per_func * weights.to(rewards_per_func.device)).nansum(dim=1)
        total[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        values = total.view(-1, num_generations, 1)
    present = ~torch.isnan(values)
    high = values.masked_fill(~present, -torch.inf).amax(dim=1)
    low = values.masked_fill(~present, torch.inf).amin(dim=1)
    return ((high > low) & present.any(dim=1)).any(dim=1)


@dataclass(frozen=True)
class Selection:
    """Which global rows of which round make up the batch, and how the decision went."""

    rows: list[tuple[int, int]]  # (round, global row), in training order
    kept_groups: int
    generated_groups: int
    rounds: int
    capped: bool  # the round cap was reached before the batch was full


def select_rows(
    spreads: Sequence[torch.Tensor], num_generations: int, target_rows: int, divisor: int, capped: bool
) -> Selection:
    """The rows to train on: those of groups with spread, round by round, up to `target_rows`. When fewer were kept
    (the round cap was reached), the largest multiple of `divisor` (processes x micro-batches per generation) of
    them, or the whole last round when that is none."""
    rows = [
        (round_index, int(group) * num_generations + member)
        for round_index, spread in enumerate(spreads)
        for group in torch.nonzero(spread).flatten().tolist()
        for member in range(num_generations)
    ]
    kept_groups = len(rows) // num_generations
    rows = rows[:target_rows]
    if len(rows) < target_rows:
        rows = rows[: len(rows) - len(rows) % divisor]
        if not rows:  # nothing with signal: train on the last round as TRL would have without the filter
            rows = [(len(spreads) - 1, row) for row in range(target_rows)]
    generated = sum(len(spread) for spread in spreads)
    return Selection(rows, kept_groups, generated, len(spreads), capped)


def collect_rounds(
    next_round: Callable[[], torch.Tensor], num_generations: int, target_rows: int, max_rounds: int
) -> tuple[list[torch.Tensor], bool]:
    """The spread per group of each generation round, calling `next_round` (one round: generate, score, return its
    spread) until the kept groups fill `target_rows` or `max_rounds` rounds are spent (0: no cap, as verl's
    max_num_gen_batches). Returns (spreads, capped)."""
    spreads: list[torch.Tensor] = []
    for _ in itertools.count() if max_rounds == 0 else range(max_rounds):
        spreads.append(next_round())
        if int(sum(spread.sum() for spread in spreads)) * num_generations >= target_rows:
            return spreads, False
    return spreads, True


def cap_error(
    selection: Selection, target_rows: int, num_generations: int, metric: str, max_rounds: int
) -> DynamicSamplingError:
    """The one-line error of a batch left unfilled at the round cap (verl raises there too)."""
    return DynamicSamplingError(
        f"dynamic sampling: {selection.rounds} generation rounds (dynamic_sampling_max_rounds={max_rounds}) kept "
        f"{selection.kept_groups} of the {target_rows // num_generations} groups a batch needs with a spread in "
        f"dynamic_sampling_metric={metric!r}: the prompts are too hard or too easy for the policy; allowed: a "
        "larger dynamic_sampling_max_rounds, 0 for no cap, or dynamic_sampling_at_cap='train' to train the "
        "smaller batch"
    )


class PromptStream:
    """Dataset indices in the data loader's order, epoch after epoch, read from `position` on (the count already
    drawn, which a checkpoint keeps): each round takes the next prompts, so none repeats within an epoch, as verl's
    rounds take the next batches of its data loader. `epochs` is iterated once per epoch (TRL's RepeatSampler: a new
    permutation from its seeded generator each time)."""

    def __init__(self, epochs: Iterable[int], position: int = 0) -> None:
        self.position = position
        self._epochs = epochs
        self._indices: Iterator[int] | None = None

    def _endless(self) -> Iterator[int]:
        while True:
            empty = True
            for index in self._epochs:
                empty = False
                yield index
            if empty:  # fewer prompts than one round takes: the loader's order has no full batch
                raise ConfigError("invalid config: dynamic_sampling=True with fewer training prompts than one batch")

    def take(self, count: int) -> list[int]:
        if self._indices is None:
            self._indices = self._endless()
            for _ in range(self.position):  # a resumed run goes on where the checkpoint's stream stopped
                next(self._indices)
        self.position += count
        return [next(self._indices) for _ in range(count)]


def check_keys(output: dict[str, Any]) -> None:
    """Refuse a rollout dict with keys dynamic sampling cannot cut and join (images and other multimodal inputs)."""
    unknown = sorted(set(output) - set(PROMPT_KEYS) - set(ROW_KEYS) - set(RECOUNTED_KEYS))
    if unknown:
        raise ConfigError(
            f"invalid config: dynamic_sampling=True with rollout keys {unknown}; allowed: text-only rollouts "
            f"(keys {sorted(PROMPT_KEYS + ROW_KEYS + RECOUNTED_KEYS)})"
        )


def _pad_to(tensor: torch.Tensor, width: int, value: float, left: bool) -> torch.Tensor:
    if tensor.dim() < 2 or tensor.size(1) == width:
        return tensor
    pad = tensor.new_full((tensor.size(0), width - tensor.size(1), *tensor.shape[2:]), value)
    return torch.cat([pad, tensor] if left else [tensor, pad], dim=1)


def join_rows(parts: Sequence[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Concatenate row-aligned rollout dicts: prompts padded on the left, completion-shaped tensors on the right."""
    out = {}
    for key in parts[0]:
        tensors = [part[key] for part in parts]
        if key in RECOUNTED_KEYS:
            continue
        width = max(t.size(1) for t in tensors) if tensors[0].dim() >= 2 else 0
        value = pad_token_id if key in ("prompt_ids", "completion_ids") else 0
        out[key] = torch.cat([_pad_to(t, width, value, left=key in PROMPT_KEYS) for t in tensors])
    return out


def take_rows(output: dict[str, Any], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """The rows `index` of a rollout dict's row tensors (the recounted keys are left out)."""
    return {key: value[index.to(value.device)] for key, value in output.items() if key not in RECOUNTED_KEYS}
