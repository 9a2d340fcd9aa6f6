"""EntropyGRPOTrainer: TRL's GRPOTrainer plus per-step token-dynamics diagnostics and entropy regularizers.

The trainer wraps TRL's methods instead of copying them (docs/architecture.md):
- `_compute_loss` hands TRL a shallow copy of the micro-batch and keeps a reference to it, so that
- `_get_per_token_logps_and_entropies`, when TRL calls it for the training loss, can (1) measure the tokens (entropy,
  Cov(logp, A), S, N, predicted entropy change) into local sums, without synchronising the device, taking H, log p
  and N from the logits tiles of TRL's own fused LM head (entropy_rl.onepass), and (2) apply the
  regularizer's edits before TRL reads the advantages (`LossEdits.at_loss`, loss_edits.py), a KL-Cov penalty being
  added after TRL's loss with TRL's own normaliser; on TRL's evaluation batches it only measures, and TRL logs the
  measurements as `eval_<name>`;
- `_generate_and_score_completions` computes the per-rollout edits (Clip_B / Clip_V, and `stat_scope=global`) once
  per rollout batch over every rank (`LossEdits.on_rollout`);
- one all-reduce per optimizer step (`_finish_step`, run from a callback after the optimizer step) turns the sums into
  metrics, logged through TRL and appended to `metrics.jsonl`.
tests/test_trl_contract.py fails loudly if a TRL upgrade changes any hooked signature or behaviour relied on here.

The regularizer's edits live in loss_edits.py (`LossEdits`, which the trainer holds). The parts that are not the
per-token loss path live next to this file, as mix-ins: checkpoints (checkpoints.py), the metrics file
(metrics_file.py), dynamic sampling's rollout (sampling.py) and the parameter-space prediction (param_dynamics.py).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import is_async_callable

from .. import dynamic_sampling, dynamics, onepass, rundir, stats
from ..config import EntropyGRPOConfig
from ..errors import ConfigError, RewardError
from ..tokens import per_token, token_ratio, unclipped_mask
from .checkpoints import CheckpointsMixin
from .loss_edits import VALID_KEY, LossEdits, loss_mask
from .metrics_file import MetricsFileMixin
from .param_dynamics import RAW_ADV_KEY, S_MINUS_N_KEY, ParamDynamicsMixin
from .sampling import DynamicSamplingMixin

# TRL generation metrics copied into each metrics.jsonl row (those of the rollout batch the step trains on).
TRL_ROW_KEYS = ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "completions/clipped_ratio")
# Per-function rewards (e.g. the overlong punishment) and dynamic sampling's counts are copied by prefix.
ROW_KEY_PREFIXES = ("rewards/", "dynamic_sampling/")
# |log p - log p_old| beyond this is clamped before TRL forms the ratio (verl's clamp): a stale or corrupted batch
# then gives a huge but finite ratio instead of inf and NaN gradients. exp(20) ~ 5e8, far outside any PPO clip.
MAX_LOG_RATIO = 20.0
NAN_FRAC_KEY = "reward/nan_frac"  # fraction of the rollout batch's completions no reward function could score

logger = logging.getLogger(__name__)


def as_entropy_config(args: GRPOConfig | None, model: Any) -> EntropyGRPOConfig:
    """The trainer's config: an EntropyGRPOConfig as given, or a plain GRPOConfig (or None, as TRL) upgraded to one."""
    if isinstance(args, EntropyGRPOConfig):
        return args
    if args is None:  # TRL's own default output directory
        name = model if isinstance(model, str) else model.config._name_or_path
        return EntropyGRPOConfig(output_dir=f"{str(name).split('/')[-1]}-GRPO")
    if not isinstance(args, GRPOConfig):
        raise TypeError(f"args must be a GRPOConfig or an EntropyGRPOConfig, got {type(args).__name__}")
    upgraded = EntropyGRPOConfig.from_grpo_config(args)
    logger.warning(
        "EntropyGRPOTrainer: plain GRPOConfig upgraded to EntropyGRPOConfig (diagnostics=True, regularizer=%r, "
        "dynamics_every=%d, metrics in %s); pass an EntropyGRPOConfig to choose them",
        upgraded.regularizer,
        upgraded.dynamics_every,
        Path(upgraded.output_dir) / upgraded.metrics_file,
    )
    return upgraded


def _noting_nones(func: Any, nones: torch.Tensor) -> Any:
    """`func` as TRL calls it, setting `nones[j]` where it returned None for completion j; reward models (modules)
    return tensors, never None, and stay as they are."""
    if isinstance(func, torch.nn.Module):
        return func

    def note(output):
        rows = [j for j, value in enumerate(output) if value is None and j < len(nones)]  # TRL checks the length
        if rows:
            nones[torch.tensor(rows, device=nones.device)] = 1.0
        return output

    if is_async_callable(func):

        async def noted_async(**kwargs):
            return note(await func(**kwargs))

        return noted_async

    def noted(**kwargs):
        return note(func(**kwargs))

    return noted


class _StepEndCallback(TrainerCallback):
    """Runs the trainer's once-per-optimizer-step work after the update (the Trainer calls on_step_end after it)."""

    def __init__(self, trainer: EntropyGRPOTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._open_metrics_file()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._before_update()

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._finish_step()


class EntropyGRPOTrainer(CheckpointsMixin, MetricsFileMixin, DynamicSamplingMixin, ParamDynamicsMixin, GRPOTrainer):
    """GRPOTrainer with entropy diagnostics and regularizers (`--regularizer`).

    With `regularizer="none"` it trains exactly like GRPOTrainer; the diagnostics only observe. It takes the same
    arguments as GRPOTrainer; a plain GRPOConfig is upgraded to an EntropyGRPOConfig with our defaults (logged), so a
    TRL script changes one import.
    """

    args: EntropyGRPOConfig

    # GRPOTrainer's parameters, names, order and defaults (tests/test_parity.py compares the two signatures).
    def __init__(
        self,
        model: Any,
        reward_funcs: Any = None,
        args: GRPOConfig | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        reward_processing_classes: Any = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[Any, Any] = (None, None),
        quantization_config: Any = None,
        peft_config: Any = None,
        tools: list[Callable] | None = None,
        rollout_func: Callable | None = None,
        environment_factory: Any = None,
    ):
        super().__init__(
            model,
            reward_funcs=reward_funcs,
            args=as_entropy_config(args, model),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            reward_processing_classes=reward_processing_classes,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
            tools=tools,
            rollout_func=rollout_func,
            environment_factory=environment_factory,
        )
        schedule = self.args.edit_schedule()
        self.regularizer = schedule.regularizer
        if not schedule.uses_ppo_clip:  # KL-Cov optimises the unclipped surrogate (Cui et al.)
            self.epsilon_low, self.epsilon_high = 1.0, math.inf
        self.loss_edits = LossEdits(
            schedule,
            self.accelerator,
            seed=self.args.seed,
            loss_type=self.loss_type,
            epsilon_low=self.epsilon_low,
            epsilon_high=self.epsilon_high,
            sequence_level=self.importance_sampling_level == "sequence",
            whole_step_on_policy=self.args.steps_per_generation == 1 and self.num_iterations == 1,
        )

        self._loss_inputs: dict[str, Any] | None = None  # the micro-batch whose loss is being computed
        self._penalty: torch.Tensor | None = None  # KL-Cov per-token penalty of that micro-batch
        self._step_sums: torch.Tensor | None = None  # stats.SUM_FIELDS accumulated over the step's micro-batches
        self._step_batches: list[dict[str, Any]] = []  # kept only on steps that measure the entropy change
        self._dynamics: tuple[list[float], list[float]] = ([], [])  # (predicted, measured) entropy changes
        self._dynamics_param: list[float] = []  # parameter-space predictions of the same steps
        self._param_prediction: dynamics.ParamPrediction | None = None  # the measured step's, until it ends
        self._grad_norm: float | None = None  # pre-clip gradient norm of the step about to be taken
        self._group_moments: dynamics.GroupMoments | None = None  # dynamics_momentum_groups' buffers
        self._check_param_dynamics()
        self._record_clip_norm_on_transformers_4()
        self._metrics_path = rundir.metrics_path(self.args.output_dir, {"metrics_file": self.args.metrics_file})
        self._rows_started = False  # the first step of this train() call makes the run directory this run's
        self._start_step = 0  # the step train() started from (the resumed checkpoint's)
        self.saved_config: dict[str, Any] | None = None  # the run's saved config (train_run's); default: the args
        self._staging = False  # True while a checkpoint is written (under RUN_DIR/.staging/, then renamed)
        self._nan_frac = 0.0  # of the latest rollout batch
        self._unscorable: list[torch.Tensor] = []  # [unscorable, broken, completions] per round
        self._nan_batches: list[int] = []  # steps of the current streak of wholly unscorable rollout batches
        self._rollout_metrics: dict[str, float] = {}  # TRL's reward metrics of the rollout batch being trained on
        self.last_metrics_row: dict[str, float] = {}  # the diagnostics of the last optimizer step (all ranks)
        self._round_rewards: torch.Tensor | None = None  # TRL's global rewards of the last generation round
        self._step_started = time.perf_counter()
        self.add_callback(_StepEndCallback(self))
        if self.args.dynamic_sampling and not hasattr(self.train_dataset, "__getitem__"):
            # The refill draws prompts by index; a streamed dataset has none.
            raise ConfigError(
                f"invalid config: dynamic_sampling=True with a {type(self.train_dataset).__name__} train_dataset; "
                "allowed: a map-style dataset (datasets.Dataset or any dataset with __len__ and __getitem__)"
            )
        if self.args.dynamic_sampling:
            dynamic_sampling.metric_column(self.args.dynamic_sampling_metric, self.reward_func_names)
        if self.args.curve_benchmarks:
            from ..training_curve import CurveCallback

            self.add_callback(CurveCallback(self))  # after the step-end callback: it reads that step's entropy

    # ---------------------------------------------------------------- hooks into TRL (guarded by the contract test)
    def _compute_loss(self, model, inputs):
        # A copy: edits replace keys for this micro-batch only; TRL reuses the buffered batch across iterations.
        self._loss_inputs = dict(inputs)
        try:
            loss = super()._compute_loss(model, self._loss_inputs)
            if self._penalty is not None:
                penalty = self._penalty * self._sampler_correction(self._loss_inputs)
                loss = loss + self._normalize_like_trl(penalty, self._loss_inputs)
            return loss
        finally:
            self._loss_inputs, self._penalty = None, None

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        inputs = self._loss_inputs
        is_loss_call = inputs is not None and kwargs.get("compute_entropy", False) and self.model.training
        wants_nec = "nec" in self.loss_edits.loss_needs
        call = (model, input_ids, attention_mask, logits_to_keep, *args)
        if not is_loss_call:
            if inputs is not None and kwargs.get("compute_entropy", False) and self.args.diagnostics:
                return self._eval_call(call, kwargs, inputs)  # TRL's evaluation loss (prediction_step)
            return super()._get_per_token_logps_and_entropies(*call, **kwargs)
        token_stats = None
        if self.args.diagnostics or wants_nec:
            (logps, entropies, *rest), token_stats = self._one_pass(*call, **kwargs)
        else:
            logps, entropies, *rest = super()._get_per_token_logps_and_entropies(*call, **kwargs)
        old = inputs.get("old_per_token_logps")
        if old is not None:
            current = logps.detach()
            inputs["old_per_token_logps"] = old.clamp(current - MAX_LOG_RATIO, current + MAX_LOG_RATIO)
        advantages = inputs["advantages"]
        nec = None if token_stats is None else token_stats.nec
        self._penalty = self.loss_edits.at_loss(logps, entropies.detach(), nec, inputs)
        if self.args.diagnostics:
            self._record_micro_batch(logps.detach(), token_stats, advantages, inputs)
        return (logps, entropies, *rest)

    def _eval_call(self, call: tuple, kwargs: dict[str, Any], inputs: dict[str, Any]):
        """TRL's log-probs of an eval batch, and the batch's diagnostics (all ranks), which TRL logs as eval_<key>,
        averaged over the evaluation's batches."""
        (logps, entropies, *rest), token_stats = self._one_pass(*call, **kwargs)
        sums = self._token_sums(logps.detach(), token_stats, inputs["advantages"], inputs)
        for key, value in stats.step_metrics(self.accelerator.reduce(sums, reduction="sum").tolist()).items():
            self._metrics["eval"][key].append(value)
        return (logps, entropies, *rest)

    def _one_pass(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        """TRL's log-prob call, plus H, log p and N of every completion token from the same logits (one pass)."""
        with onepass.capture() as calls:
            output = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        batch_size = kwargs["batch_size"] if "batch_size" in kwargs else (args[0] if args else None)
        return output, onepass.per_position(calls, input_ids, attention_mask, logits_to_keep, batch_size)

    def _generate_and_score_completions(self, inputs):
        if self.model.training and self.args.dynamic_sampling:
            output = self._dynamically_sampled(inputs)
        else:
            output = super()._generate_and_score_completions(inputs)
        if self.model.training:
            # Every step trained on this rollout batch reports its reward, also when TRL generates less than once a step
            trl_metrics = self._metrics["train"]
            keys = [*TRL_ROW_KEYS, *(key for key in trl_metrics if key.startswith(ROW_KEY_PREFIXES))]
            self._rollout_metrics = {key: trl_metrics[key][-1] for key in keys if trl_metrics.get(key)}
            if self.loss_edits.on_rollout_needed:
                self._rollout_edits(output)
        return output

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # Kept for dynamic sampling: TRL's rewards of every process (rows x functions), before any normalisation.
        if not self.model.training:
            self._round_rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            return self._round_rewards
        # TRL turns None ("not applicable") into NaN; note where, so that only NaN/inf values count as broken.
        nones = torch.zeros(len(prompts), len(self.reward_funcs), device=self.accelerator.device)
        functions = self.reward_funcs
        self.reward_funcs = [_noting_nones(func, nones[:, i]) for i, func in enumerate(functions)]
        try:
            self._round_rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        finally:
            self.reward_funcs = functions
        self._count_unscorable(self._round_rewards, self.accelerator.gather(nones).bool())  # every rank alike
        return self._round_rewards

    def _count_unscorable(self, rewards_per_func: torch.Tensor, nones: torch.Tensor) -> None:
        """Count completions that no reward function scored (TRL gives them zero advantage), and those among them that
        got a NaN or inf value (a broken reward, not TRL's None convention); read with the step's other sums at its
        end (`_check_unscorable`), so that counting them never waits for the device."""
        missing = ~torch.isfinite(rewards_per_func)
        unscorable = missing.all(dim=1)
        broken = unscorable & (missing & ~nones).any(dim=1)
        counts = torch.full((3,), float(unscorable.numel()), dtype=torch.float64, device=unscorable.device)
        counts[0], counts[1] = unscorable.sum(), broken.sum()
        self._unscorable.append(counts)

    def _check_unscorable(self, unscorable: float, broken: float, completions: float) -> None:
        """Log one reward round's unscorable share; stop a run of batches in which every completion got a NaN or inf
        value, which would otherwise train to the end on nothing."""
        self._nan_frac = unscorable / completions if completions else 0.0
        self._metrics["train"][NAN_FRAC_KEY].append(self._nan_frac)
        self._rollout_metrics[NAN_FRAC_KEY] = self._nan_frac
        if broken < completions or not completions:
            self._nan_batches = []
            return
        self._nan_batches.append(self.state.global_step)
        limit = self.args.max_nan_reward_batches
        logger.warning(
            "step %d: the reward functions returned NaN/inf for all %d completions (%d such batches in a row%s)",
            self._nan_batches[-1],
            completions,
            len(self._nan_batches),
            f"; the run stops at {limit}" if limit else "",
        )
        if limit and len(self._nan_batches) >= limit:
            raise RewardError(
                f"reward_funcs returned NaN/inf for every completion in {len(self._nan_batches)} rollout batches in "
                f"a row (steps {self._nan_batches[0]}-{self._nan_batches[-1]}); such batches train on zero "
                "advantages. Check the reward functions and the dataset columns they read "
                f"(max_nan_reward_batches={limit}; 0 never stops; None, TRL's 'not applicable', never counts)"
            )

    def _sampler_correction(self, inputs: dict[str, Any]) -> torch.Tensor | float:
        """TRL's vLLM importance-sampling weight of each token (1 without vLLM): the factor TRL's `_compute_loss`
        multiplies every per-token policy loss by, so that the KL-Cov penalty and the diagnostics' predicted entropy
        change weigh the tokens as the update does. TRL applies it only under these conditions (not for vespo)."""
        ratio = inputs.get("importance_sampling_ratio")
        corrected = self.use_vllm and self.vllm_importance_sampling_correction and self.loss_type != "vespo"
        return ratio if corrected and ratio is not None else 1.0

    # ---------------------------------------------------------------- regularizers
    @torch.no_grad()
    def _rollout_edits(self, output: dict[str, Any]) -> None:
        """The per-rollout edits of `output`, from the rollout policy's log-probs, H (and N): one no-grad forward."""
        ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        keep = output["completion_ids"].size(1)
        call = dict(batch_size=self.args.per_device_train_batch_size, compute_entropy=True)
        if "nec" not in self.loss_edits.rollout_needs:
            logps, entropies, _ = super()._get_per_token_logps_and_entropies(self.model, ids, attention, keep, **call)
            nec = None
        else:
            (logps, entropies, _), token_stats = self._one_pass(self.model, ids, attention, keep, **call)
            nec = token_stats.nec
        self.loss_edits.on_rollout(output, logps, entropies, nec)

    def _normalize_like_trl(self, per_token: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """Aggregate an extra per-token loss exactly as TRL 1.16's `_compute_loss` aggregates its own (by loss_type)."""
        mask = self._loss_mask(inputs)
        accumulation = self.current_gradient_accumulation_steps
        total = (per_token * mask).sum()
        if self.loss_type in ("grpo", "sapo"):
            return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / accumulation
        if self.loss_type == "bnpo":
            return total / mask.sum().clamp(min=1.0) / accumulation
        if self.loss_type == "dr_grpo":
            return total / (per_token.size(0) * self.max_completion_length) / accumulation
        if self.loss_type == "luspo":
            return (per_token * mask).sum(-1).mean() / accumulation
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        return total / (normalizer * accumulation / self.args.steps_per_generation)

    # ---------------------------------------------------------------- diagnostics
    def _loss_mask(self, inputs: dict[str, Any]) -> torch.Tensor:
        return loss_mask(inputs)

    def _valid_mask(self, inputs: dict[str, Any]) -> torch.Tensor:
        """Every sampled completion token, including those a filter regularizer removed from the loss."""
        return inputs[VALID_KEY] if VALID_KEY in inputs else self._loss_mask(inputs)

    def _record_micro_batch(self, logps, token_stats: onepass.TokenStats, advantages, inputs) -> None:
        """Add one micro-batch's sums to the step's, and keep the batch on steps that measure the entropy change."""
        sums = self._token_sums(logps, token_stats, advantages, inputs)
        self._step_sums = sums if self._step_sums is None else self._step_sums + sums
        if self._measures_dynamics(self.state.global_step + 1) or self.args.dynamics_momentum_groups:
            inputs[RAW_ADV_KEY] = per_token(advantages, logps).double()
            inputs[S_MINUS_N_KEY] = stats.discriminator(token_stats.logp, token_stats.entropy) - token_stats.nec
            self._step_batches.append(inputs)

    def _token_sums(self, logps, token_stats: onepass.TokenStats, advantages, inputs) -> torch.Tensor:
        """stats.SUM_FIELDS of one micro-batch. H, S and N come from the one pass (shifted sums: precise at any logit
        size, and S - N from one set of logits); log p is TRL's, the one the ratio and the update use."""
        mask = self._valid_mask(inputs).bool()
        advantages = per_token(advantages, logps).double()
        ratio = token_ratio(logps, inputs.get("old_per_token_logps"))
        unclipped = unclipped_mask(ratio, advantages, self.epsilon_low, self.epsilon_high)
        s = stats.discriminator(token_stats.logp, token_stats.entropy)
        sums = stats.token_sums(
            logp=logps,
            entropy=token_stats.entropy,
            advantages=advantages,
            mask=mask,
            S=s,
            N=token_stats.nec,
            ratio=ratio,
            unclipped=unclipped,
            # The update moves each token by its effective advantage (after regularizer weights; 0 where a filter
            # removed it): predict with that.
            # Under vLLM TRL also weighs each token's loss by its importance-sampling correction.
            update_advantages=per_token(inputs["advantages"], logps).double()
            * self._loss_mask(inputs)
            * self._sampler_correction(inputs),
        )
        return sums

    def _measures_dynamics(self, step: int) -> bool:
        every = self.args.dynamics_every
        return self.args.diagnostics and every > 0 and step % every == 0

    @torch.no_grad()
    def _entropy_sums(self, batches: list[dict[str, Any]]) -> torch.Tensor:
        """[sum of token entropies, token count] of `batches` under the current parameters."""
        total = torch.zeros(2, dtype=torch.float64, device=self.accelerator.device)
        for inputs in batches:
            input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
            attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
            # The same one-pass H as the step's diagnostics, so the measured change compares like with like.
            _, token_stats = self._one_pass(
                self.model_wrapped, input_ids, attention_mask, inputs["completion_ids"].size(1), compute_entropy=True
            )
            mask = self._valid_mask(inputs).double()
            total += torch.stack([(token_stats.entropy.double() * mask).sum(), mask.sum()])
        return total

    def _finish_step(self) -> None:
        """After each optimizer step: one all-reduce of the step's sums, then log and append a metrics row."""
        if not self._rows_started:
            self._start_rows()
        rounds, self._unscorable = self._unscorable, []
        draws = self.loss_edits.generator.consumed
        reg_sums = self.loss_edits.take_metric_sums()
        if not (self.args.diagnostics or reg_sums or rounds or draws is not None):
            return
        step = self.state.global_step
        device = self.accelerator.device
        parts = []
        if self.args.diagnostics:
            zeros = torch.zeros(len(stats.SUM_FIELDS), dtype=torch.float64, device=device)
            parts.append(zeros if self._step_sums is None else self._step_sums)  # every rank joins the collective
        measure = self._measures_dynamics(step)
        if measure:
            parts.append(self._entropy_sums(self._step_batches))
        prediction, self._param_prediction = self._param_prediction, None
        if measure and prediction is not None:
            parts.append(prediction.values().to(device))
            param_values = parts[-1].numel()  # longer with the momentum groups' parts
        reg_names = sorted(reg_sums)
        parts.extend(reg_sums[name].to(device) for name in reg_names)
        # The reward rounds are counted over every rank already (each rank holds the same counts), and each rank's
        # random draws are its own: a slot per rank, so that the sum leaves every rank's count apart.
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        parts.extend(part.to(device) for part in rounds)
        own_draws = torch.zeros(world, dtype=torch.float64, device=device)
        if draws is not None:
            own_draws[rank] = draws.to(device)
        parts.append(own_draws)
        self._step_sums, self._step_batches = None, []
        # One host synchronisation per step: everything below is plain Python floats.
        totals = self.accelerator.reduce(torch.cat(parts), reduction="sum").tolist()
        self.loss_edits.generator.settle(round(totals[-world + rank]))
        after_regs = len(totals) - world - 3 * len(rounds)
        for i in range(len(rounds)):
            counted = totals[after_regs + 3 * i : after_regs + 3 * i + 3]
            self._check_unscorable(*(round(x / world) for x in counted))
        if not (self.args.diagnostics or reg_names):
            return

        row: dict[str, float] = {}
        offset = 0
        if self.args.diagnostics:
            row = stats.step_metrics(totals[: len(stats.SUM_FIELDS)])
            offset = len(stats.SUM_FIELDS)
        if measure:
            after = totals[offset] / max(totals[offset + 1], 1.0)
            tokens = totals[offset + 1]
            offset += 2
            if prediction is not None:
                row.update(dynamics.step_values(totals[offset : offset + param_values], tokens, self._world()))
                offset += param_values
            if row.get("tokens"):
                self._record_measured(row, after - row["entropy/token_mean"])
        for i, name in enumerate(reg_names):
            total, count = totals[offset + 2 * i : offset + 2 * i + 2]
            row[f"reg/{name}"] = total / count if count else 0.0
        for key, value in row.items():
            self._metrics["train"][key].append(value)
        self.last_metrics_row = row
        self._write_row(step, row)

    def _record_measured(self, row: dict[str, float], measured: float) -> None:
        """Add the measured entropy change and the running agreement of both predictions with it."""
        row["dynamics/measured_dH"] = measured
        self._dynamics[0].append(row["dynamics/predicted_dH"])
        self._dynamics[1].append(measured)
        r = stats.pearson(*self._dynamics)
        if r is not None:
            row["dynamics/pearson_r"] = r
        if "dynamics/predicted_dH_param" in row:
            self._dynamics_param.append(row["dynamics/predicted_dH_param"])
            if len(self._dynamics_param) == len(self._dynamics[1]):
                r = stats.pearson(self._dynamics_param, self._dynamics[1])
                if r is not None:
                    row["dynamics/pearson_r_param"] = r

    def log_curve_seconds(self, seconds: float) -> None:
        """Wall time of an in-training evaluation (training_curve), logged with the next step's metrics."""
        self._metrics["train"]["curve/seconds"].append(seconds)
