"""The regularizer's edits inside TRL's loss: EntropyGRPOTrainer holds one `LossEdits`, built from the edit schedule.

An edit reaches TRL's `_compute_loss` through what that loss already reads (docs/architecture.md):
- loss weights become per-token advantages (exact for every loss type: each is linear in A for a given sign of A, the
  PPO clip's branch included);
- a KL-Cov penalty is returned per token, for the trainer to add after TRL's loss with TRL's own normaliser;
- removed tokens (Clip_B, Clip_V) leave the loss mask through TRL's `tool_mask`, and TRL's global token count is
  recounted.
Edits taken once per rollout batch (`on_rollout`) travel as extra per-token keys that TRL shuffles and splits with its
own keys. `LossEdits` reads only its arguments and the settings it was built with, never the trainer.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..regularizers import LOCAL, Edits, EditSchedule
from ..regularizers.base import penalty_loss
from ..regularizers.common import DrawStream
from ..tokens import CLIP_LOSS_TYPES, TokenBatch
from .batch_keys import PENALTY_KEY, VALID_KEY, WEIGHT_KEY, loss_mask

# Loss types whose token normaliser is TRL's `num_items_in_batch` (global count of loss tokens).
GLOBAL_COUNT_LOSS_TYPES = ("dapo", "cispo", "vespo")


class AcceleratorReducer:
    """Statistics over every rank of the step (the `Reducer` of entropy_rl.regularizers.base)."""

    def __init__(self, accelerator: Any):
        self.accelerator = accelerator

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(x.double(), reduction="sum")

    def max(self, x: torch.Tensor) -> torch.Tensor:
        return self.accelerator.gather(x.reshape(1)).max()

    def cat(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        if self.accelerator.num_processes == 1:
            return x, 0  # nothing to gather, and the sizes below would be read on the host
        sizes = self.accelerator.gather(torch.tensor([x.numel()], device=x.device)).tolist()
        as_float = x.double()  # gather pads with zeros and not every backend moves bool tensors
        padded = self.accelerator.pad_across_processes(as_float, dim=0)
        chunks = self.accelerator.gather(padded).split(padded.numel())
        full = torch.cat([chunk[:size] for chunk, size in zip(chunks, sizes, strict=True)]).to(x.dtype)
        return full, sum(sizes[: self.accelerator.process_index])

    def count(self, local: torch.Tensor) -> torch.Tensor:
        """A token count over every rank, in its own dtype, as TRL counts `num_items_in_batch`."""
        return self.accelerator.gather(local).sum()


class LossEdits:
    """What the trainer asks of the regularizers: edits per loss micro-batch (`at_loss`) and per rollout batch
    (`on_rollout`), the metrics they log (summed until `take_metric_sums`) and Clip-Cov's random draws (`generator`).

    `epsilon_low` / `epsilon_high` are the trainer's PPO clip (already opened for KL-Cov); `whole_step_on_policy`:
    one micro-batch per rank is the whole step, on-policy (steps_per_generation=1, num_iterations=1).
    """

    def __init__(
        self,
        schedule: EditSchedule,
        accelerator: Any,
        *,
        seed: int,
        loss_type: str,
        epsilon_low: float,
        epsilon_high: float,
        sequence_level: bool,
        whole_step_on_policy: bool,
    ):
        self.schedule = schedule
        self.reducer = AcceleratorReducer(accelerator)
        # Clip-Cov's random choice is reproducible; with stat_scope=global every rank draws the same global choice.
        # Its draws are read on the device and the generator advanced at the step's one synchronisation.
        self.generator = DrawStream(torch.Generator().manual_seed(seed))
        # The loss types without a PPO clip (cispo, sapo, vespo) stop no token's gradient by the ratio: no token counts
        # as clipped for Clip-Cov's candidates or STEER's estimator there.
        clipped = loss_type in CLIP_LOSS_TYPES
        self.epsilon_low = epsilon_low if clipped else 1.0
        self.epsilon_high = epsilon_high if clipped else math.inf
        self.sequence_level = sequence_level
        # When one micro-batch per rank is the whole step, on-policy, the loss forward already sees the rollout
        # policy's tokens: per-rollout edits can be taken there (over every rank) instead of in an extra forward.
        # Removed tokens then leave through a zero weight and a recounted num_items_in_batch, which is exact for the
        # loss types normalised by that count.
        self.rollout_at_loss = (
            schedule.per_rollout is not None
            and schedule.per_micro_batch is None
            and whole_step_on_policy
            and loss_type in GLOBAL_COUNT_LOSS_TYPES
        )
        self.metric_sums: dict[str, torch.Tensor] = {}  # regularizer metrics: name -> [sum, count]
        self._rollout_penalty_coef = 0.0  # KL-Cov's coefficient when its tokens were chosen per rollout batch

    @property
    def on_rollout_needed(self) -> bool:
        """Whether each rollout batch needs `on_rollout` (one no-grad forward of the rollout policy first)."""
        return self.schedule.per_rollout is not None and not self.rollout_at_loss

    @property
    def rollout_needs(self) -> frozenset[str]:
        """The TokenBatch fields beyond the log-probs that `on_rollout` reads ("entropies", "nec")."""
        return frozenset() if self.schedule.per_rollout is None else self.schedule.per_rollout.needs

    @property
    def loss_needs(self) -> frozenset[str]:
        """The TokenBatch fields beyond the log-probs that `at_loss` reads."""
        at_loss = self.schedule.per_rollout if self.rollout_at_loss else self.schedule.per_micro_batch
        return frozenset() if at_loss is None else at_loss.needs

    def token_batch(self, logps, old_logps, entropies, nec, inputs: dict[str, Any]) -> TokenBatch:
        return TokenBatch(
            logps=logps,
            old_logps=old_logps,
            advantages=inputs["advantages"],
            mask=loss_mask(inputs),
            entropies=entropies,
            nec=nec,
            epsilon_low=self.epsilon_low,
            epsilon_high=self.epsilon_high,
            sequence_level=self.sequence_level,
        )

    def at_loss(self, logps, entropies, nec, inputs: dict[str, Any]) -> torch.Tensor | None:
        """Turn the micro-batch's edits into what TRL's loss reads: per-token advantages (and a recounted
        num_items_in_batch) written into `inputs`; the KL-Cov per-token penalty is returned (None without one)."""
        old = inputs.get("old_per_token_logps")
        batch = self.token_batch(logps, logps.detach() if old is None else old, entropies, nec, inputs)
        if self.rollout_at_loss:
            edits = self.schedule.per_rollout.edits(batch, self.reducer, self.generator)
            self._add_metrics(edits)
            if edits.keep is not None:
                kept = loss_mask(inputs) * edits.keep
                edits.weight = edits.keep.to(logps.dtype) if edits.weight is None else edits.weight * edits.keep
                inputs["num_items_in_batch"] = self.reducer.count(kept.sum())
        elif self.schedule.per_micro_batch is not None:
            edits = self.schedule.per_micro_batch.edits(batch, LOCAL, self.generator)
            self._add_metrics(edits)
        else:
            edits = Edits(
                weight=inputs.get(WEIGHT_KEY), penalty=inputs.get(PENALTY_KEY), penalty_coef=self._rollout_penalty_coef
            )
        if edits.weight is not None:
            inputs["advantages"] = batch.advantages * edits.weight
        return None if edits.penalty is None else penalty_loss(batch, edits)

    @torch.no_grad()
    def on_rollout(self, output: dict[str, Any], logps, entropies, nec) -> None:
        """Edits over the whole rollout batch of every rank, from the rollout policy's `logps` (and H, N), written
        into TRL's rollout batch `output` as extra per-token keys and a smaller loss mask."""
        batch = self.token_batch(logps, logps, entropies, nec, output)
        edits = self.schedule.per_rollout.edits(batch, self.reducer, self.generator)
        self._add_metrics(edits)
        if edits.weight is not None:
            output[WEIGHT_KEY] = edits.weight
        if edits.penalty is not None:
            output[PENALTY_KEY] = edits.penalty
            self._rollout_penalty_coef = edits.penalty_coef
        if edits.keep is not None:
            keep = edits.keep.to(output["completion_mask"].dtype)
            output[VALID_KEY] = loss_mask(output)
            output["tool_mask"] = output["tool_mask"] * keep if "tool_mask" in output else keep
            # DAPO-style losses divide by the global count of loss tokens: recount what is left.
            output["num_items_in_batch"] = self.reducer.count(loss_mask(output).sum())

    def _add_metrics(self, edits: Edits) -> None:
        for name, (total, count) in edits.metrics.items():
            pair = torch.stack([total.double(), count.double()])
            self.metric_sums[name] = pair if name not in self.metric_sums else self.metric_sums[name] + pair

    def take_metric_sums(self) -> dict[str, torch.Tensor]:
        """The metric sums since the last call (name -> [sum, count], local to this rank), then start afresh."""
        sums, self.metric_sums = self.metric_sums, {}
        return sums


def normalize_like_trl(
    per_token: torch.Tensor,
    inputs: dict[str, Any],
    *,
    loss_type: str,
    accumulation: int,
    max_completion_length: int,
    world: int,
    steps_per_generation: int,
) -> torch.Tensor:
    """Aggregate an extra per-token loss (KL-Cov's penalty) exactly as TRL 1.16's `_compute_loss` aggregates its own,
    by loss_type, so that it weighs in the update as TRL's own terms do."""
    mask = loss_mask(inputs)
    total = (per_token * mask).sum()
    if loss_type in ("grpo", "sapo"):
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / accumulation
    if loss_type == "bnpo":
        return total / mask.sum().clamp(min=1.0) / accumulation
    if loss_type == "dr_grpo":
        return total / (per_token.size(0) * max_completion_length) / accumulation
    if loss_type == "luspo":
        return (per_token * mask).sum(-1).mean() / accumulation
    normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / world
    return total / (normalizer * accumulation / steps_per_generation)
