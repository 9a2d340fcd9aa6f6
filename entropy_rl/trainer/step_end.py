"""The trainer's work once per optimizer step, read top to bottom: just before the update the parameter-space probe
(`before_update`), after it one all-reduce of the step's named sums, then the metrics row, logged through TRL and
appended to metrics.jsonl (`finish`). It owns the step's helpers; the trainer feeds them during the step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import param_prediction, stats
from ..config import EntropyGRPOConfig
from ..regularizers.common import DrawStream
from . import agreement
from .metrics_file import MetricsFile
from .param_probe import ParamProbe, PolicyLoss, Update
from .step_sums import TOKENS, StepSums
from .unscorable import NAN_FRAC_KEY, UnscorableCount

# Slots of the step's sums besides TOKENS: the entropy after the update, the parameter-space prediction, each rank's
# random draws; the reward rounds' counts and the regularizer metrics are named by prefix.
ENTROPY_AFTER, PARAM, DRAWS, ROUND, REG = "entropy_after", "param", "draws", "round/", "reg/"


class StepEnd:
    """The step's sums, kept micro-batches, probe, agreement, unscorable count and metrics file.

    `one_pass(input_ids, attention_mask, logits_to_keep)` is the trainer's one-pass call on the current parameters;
    `logged` TRL's train metrics (name -> values), which TRL averages at each log.
    """

    def __init__(
        self,
        args: EntropyGRPOConfig,
        accelerator: Any,
        *,
        loss: PolicyLoss,
        one_pass: Callable[..., Any],
        logged: dict[str, list[float]],
    ):
        self.args, self.accelerator, self.one_pass, self.logged = args, accelerator, one_pass, logged
        self.sums = StepSums()
        self.batches: list[dict[str, Any]] = []  # kept only on steps that measure the entropy change
        self.rollout_metrics: dict[str, float] = {}  # TRL's reward metrics of the rollout batch being trained on
        self.last_row: dict[str, float] = {}  # the diagnostics of the last optimizer step (all ranks)
        self.probe = ParamProbe(args, loss)
        self.agreement = agreement.DynamicsAgreement()
        self.unscorable = UnscorableCount()
        self.metrics_file = MetricsFile(args.output_dir, args.metrics_file, is_main=accelerator.is_main_process)

    def measures(self, step: int) -> bool:
        """Whether optimizer step `step` measures the entropy change (dynamics_every)."""
        every = self.args.dynamics_every
        return self.args.diagnostics and every > 0 and step % every == 0

    def begin(self, start_step: int) -> None:
        """At train(): the metrics rows the (possibly resumed) run continues from, and its measured steps."""
        kept = self.metrics_file.open(start_step)
        if kept is not None:
            self.agreement.restore(kept)

    def before_update(self, model: Any, optimizer: Any, *, step: int, world: int, sharded: bool) -> None:
        """Just before optimizer.step() of `step`: the parameter-space probe, on the steps it measures (and on every
        step with the momentum groups)."""
        measuring = self.args.dynamics_param and self.measures(step)
        if not (measuring or self.args.dynamics_momentum_groups):
            return
        all_reduce = (lambda x: self.accelerator.reduce(x, reduction="sum")) if world > 1 else None
        update = Update(model, optimizer, self.batches, world=world, sharded=sharded, all_reduce=all_reduce)
        self.probe.before_update(update, measuring=measuring)

    def finish(self, step: int, epoch: float | None, *, reg_sums: dict[str, torch.Tensor], draws: DrawStream) -> None:
        """After optimizer step `step`: one all-reduce of the step's named sums, then log and append a metrics row
        (the trainer starts `metrics_file` first). `reg_sums` are the step's regularizer metrics (name -> [sum,
        count]); `draws` the regularizers' random stream, advanced here by what this rank drew."""
        rounds, drawn = self.unscorable.take(), draws.consumed
        if not (self.args.diagnostics or reg_sums or rounds or drawn is not None):
            return
        device, sums = self.accelerator.device, self.sums
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        if self.args.diagnostics:  # every rank joins the collective
            sums.setdefault(TOKENS, torch.zeros(len(stats.SUM_FIELDS), dtype=torch.float64, device=device))
        measure = self.measures(step)
        prediction = self.probe.take_prediction()
        if measure:
            sums.add(ENTROPY_AFTER, agreement.entropy_sums(self.batches, self.one_pass, device))
            if prediction is not None:
                sums.add(PARAM, prediction.values())
        reg_names = sorted(reg_sums)
        for name in reg_names:
            sums.add(REG + name, reg_sums[name])
        # The reward rounds are counted over every rank already (each rank holds the same counts), and each rank's
        # random draws are its own: a slot per rank, so that the sum leaves every rank's count apart.
        for i, counts in enumerate(rounds):
            sums.add(f"{ROUND}{i}", counts)
        own_draws = torch.zeros(world, dtype=torch.float64, device=device)
        if drawn is not None:
            own_draws[rank] = drawn.to(device)
        sums.add(DRAWS, own_draws)
        self.batches = []
        # One host synchronisation per step: everything below is plain Python floats.
        totals = sums.reduce(lambda x: self.accelerator.reduce(x, reduction="sum"), device)
        draws.settle(round(totals[DRAWS][rank]))
        for i in range(len(rounds)):
            counted = (round(x / world) for x in totals[f"{ROUND}{i}"])
            nan_frac = self.unscorable.check(*counted, step=step, limit=self.args.max_nan_reward_batches)
            self.logged[NAN_FRAC_KEY].append(nan_frac)
            self.rollout_metrics[NAN_FRAC_KEY] = nan_frac
        if not (self.args.diagnostics or reg_names):
            return

        row = stats.step_metrics(totals[TOKENS]) if self.args.diagnostics else {}
        if measure:
            entropy_sum, tokens = totals[ENTROPY_AFTER]
            if prediction is not None:
                row.update(param_prediction.step_values(totals[PARAM], tokens, world))
            if row.get("tokens"):
                self.agreement.record(row, entropy_sum / max(tokens, 1.0) - row["entropy/token_mean"])
        for name in reg_names:
            total, count = totals[REG + name]
            row[f"reg/{name}"] = total / count if count else 0.0
        for key, value in row.items():
            self.logged[key].append(value)
        self.last_row = row
        self.metrics_file.write(step, epoch, {**self.rollout_metrics, **row})
