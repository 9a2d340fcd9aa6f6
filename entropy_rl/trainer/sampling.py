"""Dynamic sampling (DAPO's filter_groups) inside EntropyGRPOTrainer's rollout: keep the groups whose metric differs
and refill the batch with more generation rounds from the data loader's next prompts; the selection logic is
entropy_rl.dynamic_sampling."""

from __future__ import annotations

import logging
from typing import Any

import torch
from trl.trainer.grpo_trainer import RepeatSampler

from .. import dynamic_sampling
from ..errors import ConfigError

logger = logging.getLogger(__name__)


class DynamicSamplingMixin:
    """The rollout-side half of dynamic sampling: generation rounds, the prompt stream and the rows each rank keeps."""

    # Prompts drawn so far by dynamic sampling's rounds (saved with the regularizer state: a resume goes on from it).
    _prompts_drawn: int = 0
    _prompt_stream: dynamic_sampling.PromptStream | None = None

    def _dynamically_sampled(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """A rollout batch of groups whose metric differs, generated round by round from the data loader's order (at
        most dynamic_sampling_max_rounds); every process takes the same decisions from the global rewards."""
        group, processes, local_rows = self.num_generations, self.accelerator.num_processes, len(inputs)
        target = processes * local_rows
        column = dynamic_sampling.metric_column(self.args.dynamic_sampling_metric, self.reward_func_names)
        outputs: list[dict[str, Any]] = []

        def next_round() -> torch.Tensor:
            # Every round, the first too, reads the stream: the next step starts where this one stopped, as in verl.
            output = super(DynamicSamplingMixin, self)._generate_and_score_completions(self._stream_inputs(local_rows))
            dynamic_sampling.check_keys(output)
            rewards, weights = self._round_rewards, self.reward_weights
            per_function = self.multi_objective_aggregation == "normalize_then_sum"
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
            logger.warning("step %d: %s; training %d rows", self.state.global_step + 1, error, len(selection.rows))
        output = self._gather_rows(outputs, selection.rows, local_rows)
        # DAPO-style losses divide by the global count of loss tokens: count those of the batch actually kept.
        output["num_items_in_batch"] = self.accelerator.gather(self._loss_mask(output).sum()).sum()
        metrics = self._metrics["train"]
        metrics["dynamic_sampling/rounds"].append(float(selection.rounds))
        metrics["dynamic_sampling/kept_fraction"].append(selection.kept_groups / selection.generated_groups)
        metrics["dynamic_sampling/filled"].append(min(selection.kept_groups * group, target) / target)
        metrics["dynamic_sampling/capped"].append(float(selection.capped))
        return output

    def _stream_inputs(self, local_rows: int) -> list[dict[str, Any]]:
        """This process's share of the next global batch of the data loader's order (TRL's RepeatSampler with the
        same seed: its permutations, epoch after epoch), each prompt repeated num_generations times in a row as TRL's
        sampler lays them out. Every process reads the same stream, so all see the same global batch."""
        group, processes = self.num_generations, self.accelerator.num_processes
        prompts = processes * local_rows // group
        if self._prompt_stream is None:
            if len(self.train_dataset) < prompts:
                raise ConfigError(
                    f"invalid config: dynamic_sampling=True with {len(self.train_dataset)} training prompts; allowed: "
                    f"at least one batch ({prompts} prompts)"
                )
            order = RepeatSampler(
                self.train_dataset, 1, batch_size=prompts, shuffle=self.shuffle_dataset, seed=self.args.seed
            )
            self._prompt_stream = dynamic_sampling.PromptStream(order, self._prompts_drawn)
        indices = self._prompt_stream.take(prompts)
        self._prompts_drawn = self._prompt_stream.position
        rows = [index for index in indices for _ in range(group)]
        rank = self.accelerator.process_index
        return [self.train_dataset[index] for index in rows[rank * local_rows : (rank + 1) * local_rows]]

    def _gather_rows(
        self, outputs: list[dict[str, Any]], rows: list[tuple[int, int]], local_rows: int
    ) -> dict[str, torch.Tensor]:
        """This process's equal share of the selected (round, global row) list, fetched from whichever process
        generated each row (one gather over processes when there are several)."""
        rank, processes = self.accelerator.process_index, self.accelerator.num_processes
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
        pad = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0
        table = dynamic_sampling.join_rows([part for _, _, part in parts], pad)
        position, offset = {}, 0
        for round_index, owned, _ in parts:
            position.update({(round_index, g): offset + i for i, g in enumerate(owned)})
            offset += len(owned)
        share = len(rows) // processes
        mine = torch.tensor([position[row] for row in rows[rank * share : (rank + 1) * share]], dtype=torch.long)
        device = self.accelerator.device
        return {key: value[mine].to(device) for key, value in table.items()}
