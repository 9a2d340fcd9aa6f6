"""Dynamic sampling (DAPO's filter_groups) inside EntropyGRPOTrainer's rollout: keep the groups whose rewards
differ and refill the batch with more generation rounds; the selection logic is entropy_rl.dynamic_sampling."""

from __future__ import annotations

from typing import Any

import torch

from .. import dynamic_sampling


class DynamicSamplingMixin:
    """The rollout-side half of dynamic sampling: generation rounds, the refill prompts and the rows each rank keeps."""

    def _dynamically_sampled(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """TRL's rollout batch with only groups whose rewards differ, refilled by more generation rounds (at most
        dynamic_sampling_max_rounds); every process takes the same decisions from the global rewards."""
        group, processes, local_rows = self.num_generations, self.accelerator.num_processes, len(inputs)
        target = processes * local_rows
        outputs: list[dict[str, Any]] = []
        spreads: list[torch.Tensor] = []
        batch = inputs
        for round_index in range(self.args.dynamic_sampling_max_rounds):
            if round_index:
                batch = self._refill_inputs(local_rows, round_index)
            output = super()._generate_and_score_completions(batch)
            dynamic_sampling.check_keys(output)
            per_function = self.multi_objective_aggregation == "normalize_then_sum"
            spreads.append(
                dynamic_sampling.groups_with_spread(self._round_rewards, self.reward_weights, group, per_function).cpu()
            )
            outputs.append(output)
            if int(sum(spread.sum() for spread in spreads)) * group >= target:
                break
        capped = int(sum(spread.sum() for spread in spreads)) * group < target
        divisor = processes * self.args.steps_per_generation
        selection = dynamic_sampling.select_rows(spreads, group, target, divisor, capped)
        output = self._gather_rows(outputs, selection.rows, local_rows)
        # DAPO-style losses divide by the global count of loss tokens: count those of the batch actually kept.
        output["num_items_in_batch"] = self.accelerator.gather(self._loss_mask(output).sum()).sum()
        metrics = self._metrics["train"]
        metrics["dynamic_sampling/rounds"].append(float(selection.rounds))
        metrics["dynamic_sampling/kept_fraction"].append(selection.kept_groups / selection.generated_groups)
        metrics["dynamic_sampling/filled"].append(min(selection.kept_groups * group, target) / target)
        metrics["dynamic_sampling/capped"].append(float(selection.capped))
        return output

    def _refill_inputs(self, local_rows: int, round_index: int) -> list[dict[str, Any]]:
        """This process's share of a fresh global batch: random training prompts, each repeated num_generations times
        in a row as TRL's sampler lays them out. The draw depends on (seed, step, round) only, so every process and
        every process count sees the same global batch, and a resumed run draws the same prompts."""
        group, processes = self.num_generations, self.accelerator.num_processes
        seed = (self.args.seed * 1_000_003 + self.state.global_step) * 1_009 + round_index
        generator = torch.Generator().manual_seed(seed)
        groups = processes * local_rows // group
        size = len(self.train_dataset)
        draws = torch.cat([torch.randperm(size, generator=generator) for _ in range(-(-groups // size))])[:groups]
        rows = [int(index) for index in draws for _ in range(group)]
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
