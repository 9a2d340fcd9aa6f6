"""Dynamic sampling (DAPO's filter_groups) over TRL's rollout: keep the groups whose metric differs and refill the
batch with more generation rounds from the data loader's next prompts; the selection logic is
entropy_rl.dynamic_sampling."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from trl.trainer.grpo_trainer import RepeatSampler

from .. import dynamic_sampling
from ..config import EntropyGRPOConfig
from ..errors import ConfigError
from .batch_keys import loss_mask

logger = logging.getLogger(__name__)

# A generation round: this process's rows in, TRL's rollout output and its global rewards (rows x functions) out.
Generate = Callable[[list[dict[str, Any]]], tuple[dict[str, Any], torch.Tensor]]


class DynamicSampler:
    """The generation rounds of a dynamically sampled rollout batch and the prompt stream they read; `prompts_drawn`
    (saved in checkpoints) is where a resumed run goes on in that stream. `group` is num_generations, `shuffle` and
    `normalize_then_sum` TRL's shuffle_dataset and multi_objective_aggregation, `pad_token_id` the tokenizer's."""

    def __init__(
        self,
        args: EntropyGRPOConfig,
        dataset: Any,
        reward_names: list[str],
        accelerator: Any,
        *,
        group: int,
        shuffle: bool,
        normalize_then_sum: bool,
        pad_token_id: int | None,
    ) -> None:
        self.args, self.dataset, self.accelerator, self.group, self.shuffle = args, dataset, accelerator, group, shuffle
        self.normalize_then_sum, self.pad = normalize_then_sum, pad_token_id if pad_token_id is not None else 0
        self.prompts_drawn = 0  # prompts drawn so far by the rounds
        self._stream: dynamic_sampling.PromptStream | None = None
        self._column: int | None = None
        if not args.dynamic_sampling:
            return
        if not hasattr(dataset, "__getitem__"):  # the refill draws prompts by index; a streamed dataset has none
            raise ConfigError(
                f"invalid config: dynamic_sampling=True with a {type(dataset).__name__} train_dataset; "
                "allowed: a map-style dataset (datasets.Dataset or any dataset with __len__ and __getitem__)"
            )
        self._column = dynamic_sampling.metric_column(args.dynamic_sampling_metric, reward_names)

    def sample(
        self, local_rows: int, generate: Generate, *, reward_weights: torch.Tensor, step: int
    ) -> tuple[dict[str, Any], dict[str, float]]:
        """A rollout batch of groups whose metric differs, generated round by round from the data loader's order (at
        most dynamic_sampling_max_rounds), and its `dynamic_sampling/*` metrics; every process takes the same
        decisions from the global rewards."""
        accelerator = self.accelerator
        group, processes = self.group, accelerator.num_processes
        target = processes * local_rows
        column = self._column
        outputs: list[dict[str, Any]] = []

        def next_round() -> torch.Tensor:
            # Every round, the first too, reads the stream: the next step starts where this one stopped, as in verl.
            output, rewards = generate(self._stream_inputs(local_rows))
            dynamic_sampling.check_keys(output)
            weights, per_function = reward_weights, self.normalize_then_sum
            if column is not None:
                rewards, weights, per_function = rewards[:, column : column + 1], weights[column : column + 1], True
            outputs.append(output)
            return dynamic_sampling.groups_with_spread(rewards, weights, group, per_function).cpu()

        max_rounds = self.args.dynamic_sampling_max_rounds
        spreads, capped = dynamic_sampling.collect_rounds(next_round, group, target, max_rounds)
        divisor = processes * self.args.steps_per_generation
        selection = dynamic_sampling.select_rows(spreads, group, target, divisor, capped)
        if capped:
            error = dynamic_sampling.cap_error(selection, target, group, self.args.dynamic_sampling_metric, max_rounds)
            if self.args.dynamic_sampling_at_cap == "error":
                raise error
            logger.warning("step %d: %s; training %d rows", step, error, len(selection.rows))
        output = _gather_rows(outputs, selection.rows, local_rows, accelerator, self.pad)
        # DAPO-style losses divide by the global count of loss tokens: count those of the batch actually kept.
        output["num_items_in_batch"] = accelerator.gather(loss_mask(output).sum()).sum()
        metrics = {
            "dynamic_sampling/rounds": float(selection.rounds),
            "dynamic_sampling/kept_fraction": selection.kept_groups / selection.generated_groups,
            "dynamic_sampling/filled": min(selection.kept_groups * group, target) / target,
            "dynamic_sampling/capped": float(selection.capped),
        }
        return output, metrics

    def _stream_inputs(self, local_rows: int) -> list[dict[str, Any]]:
        """This process's share of the next global batch of the data loader's order (TRL's RepeatSampler with the
        same seed: its permutations, epoch after epoch), each prompt repeated num_generations times in a row as TRL's
        sampler lays them out. Every process reads the same stream, so all see the same global batch."""
        group, processes = self.group, self.accelerator.num_processes
        prompts = processes * local_rows // group
        if self._stream is None:
            if len(self.dataset) < prompts:
                raise ConfigError(
                    f"invalid config: dynamic_sampling=True with {len(self.dataset)} training prompts; allowed: "
                    f"at least one batch ({prompts} prompts)"
                )
            order = RepeatSampler(self.dataset, 1, batch_size=prompts, shuffle=self.shuffle, seed=self.args.seed)
            self._stream = dynamic_sampling.PromptStream(order, self.prompts_drawn)
        indices = self._stream.take(prompts)
        self.prompts_drawn = self._stream.position
        rows = [index for index in indices for _ in range(group)]
        rank = self.accelerator.process_index
        return [self.dataset[index] for index in rows[rank * local_rows : (rank + 1) * local_rows]]


def _gather_rows(
    outputs: list[dict[str, Any]], rows: list[tuple[int, int]], local_rows: int, accelerator: Any, pad: int
) -> dict[str, torch.Tensor]:
    """This process's equal share of the selected (round, global row) list, fetched from whichever process generated
    each row (one gather over processes when there are several)."""
    rank, processes = accelerator.process_index, accelerator.num_processes
    selected = sorted(set(rows))
    parts = []  # (round, global rows, their tensors) this process owns
    for round_index, output in enumerate(outputs):
        owned = [g for (r, g) in selected if r == round_index and g // local_rows == rank]
        index = torch.tensor([g - rank * local_rows for g in owned], dtype=torch.long)
        parts.append((round_index, owned, dynamic_sampling.take_rows(output, index)))
    if processes > 1:
        from accelerate.utils import gather_object

        cpu_parts = [(r, g, {key: value.cpu() for key, value in part.items()}) for r, g, part in parts]
        parts = gather_object(cpu_parts)
    table = dynamic_sampling.join_rows([part for _, _, part in parts], pad)
    position, offset = {}, 0
    for round_index, owned, _ in parts:
        position.update({(round_index, g): offset + i for i, g in enumerate(owned)})
        offset += len(owned)
    share = len(rows) // processes
    mine = torch.tensor([position[row] for row in rows[rank * share : (rank + 1) * share]], dtype=torch.long)
    return {key: value[mine].to(accelerator.device) for key, value in table.items()}
