"""EntropyGRPOTrainer: TRL's GRPOTrainer plus per-step token-dynamics diagnostics and entropy regularizers.

The trainer wraps TRL's methods instead of copying them (docs/architecture.md):
- `_compute_loss` hands TRL a shallow copy of the micro-batch and keeps a reference to it, so that
- `_get_per_token_logps_and_entropies`, when TRL calls it for the training loss, can (1) measure the tokens (entropy,
  Cov(logp, A), S, N, predicted entropy change) into the step's sums, without synchronising the device, taking H,
  log p and N from the logits tiles of TRL's own fused LM head (entropy_rl.onepass), and (2) apply the
  regularizer's edits before TRL reads the advantages (`LossEdits.at_loss`, loss_edits.py), a KL-Cov penalty being
  added after TRL's loss with TRL's own normaliser; on TRL's evaluation batches it only measures, and TRL logs the
  measurements as `eval_<name>`;
- `_generate_and_score_completions` computes the per-rollout edits (Clip_B / Clip_V, and `stat_scope=global`) once
  per rollout batch over every rank (`LossEdits.on_rollout`);
- one all-reduce per optimizer step (`_finish_step`, run from a callback after the optimizer step) turns the sums into
  metrics, logged through TRL and appended to `metrics.jsonl`.
tests/test_trl_contract.py fails loudly if a TRL upgrade changes any hooked signature or behaviour relied on here.

Everything else is a helper object the trainer holds and hands what it needs (none reads the trainer): the
regularizer's edits (loss_edits.py), the work once per optimizer step (step_end.py, holding the step's sums, the
parameter-space probe, the agreement of the predictions with the measured change, the unscorable-reward count and the
metrics file) and dynamic sampling (sampling.py); checkpoints stay a mix-in (checkpoints.py) because they override
the Trainer's own methods.
"""

from __future__ import annotations

import gc
import inspect
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from .. import onepass, stats
from ..config import EntropyGRPOConfig
from ..tokens import per_token
from . import step_sums
from .batch_keys import RAW_ADV_KEY, S_MINUS_N_KEY, sampler_correction
from .checkpoints import CheckpointsMixin
from .loss_edits import LossEdits, normalize_like_trl
from .param_probe import PolicyLoss, is_attributable
from .sampling import DynamicSampler
from .step_end import StepEnd
from .unscorable import noting_nones

# TRL generation metrics copied into each metrics.jsonl row (those of the rollout batch the step trains on).
TRL_ROW_KEYS = ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "completions/clipped_ratio")
# Per-function rewards (e.g. the overlong punishment) and dynamic sampling's counts are copied by prefix.
ROW_KEY_PREFIXES = ("rewards/", "dynamic_sampling/")
# |log p - log p_old| beyond this is clamped before TRL forms the ratio (verl's clamp): a stale or corrupted batch
# then gives a huge but finite ratio instead of inf and NaN gradients. exp(20) ~ 5e8, far outside any PPO clip.
MAX_LOG_RATIO = 20.0

logger = logging.getLogger(__name__)
# GRPOTrainer.__init__'s parameter names, which EntropyGRPOTrainer.__init__ repeats and forwards.
_GRPO_PARAMETERS = tuple(inspect.signature(GRPOTrainer.__init__).parameters)[1:]


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


class _StepEndCallback(TrainerCallback):
    """Runs the trainer's once-per-optimizer-step work after the update (the Trainer calls on_step_end after it)."""

    def __init__(self, begin: Callable[[int], None], before_update: Callable[[], None], end: Callable[[], None]):
        self.begin, self.before_update, self.end = begin, before_update, end

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin(state.global_step)  # the resumed checkpoint's step, or 0

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.before_update()

    def on_step_end(self, args, state, control, **kwargs):
        self.end()


class EntropyGRPOTrainer(CheckpointsMixin, GRPOTrainer):
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
        # The signature above is GRPOTrainer's: every parameter goes to it as given, but `args`, upgraded.
        given = {name: value for name, value in locals().items() if name in _GRPO_PARAMETERS}
        super().__init__(**{**given, "args": as_entropy_config(args, model)})
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
        loss = PolicyLoss(
            self._get_per_token_logps_and_entropies,
            self._normalize_like_trl,
            self.epsilon_low,
            self.epsilon_high,
            attributable=is_attributable(self.loss_type, self.importance_sampling_level),
            high_entropy_mask=(
                lambda entropies, mask: self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile)
            )
            if self.top_entropy_quantile < 1.0
            else None,
        )
        self._step_end = StepEnd(
            self.args,
            self.accelerator,
            loss=loss,
            one_pass=lambda *call: self._one_pass(self.model_wrapped, *call, compute_entropy=True),
            logged=self._metrics["train"],
        )
        self.step_sums = self._step_end.sums  # the step's sums, reduced once at its end
        self._check_param_dynamics()
        if not hasattr(Trainer, "_clip_grad_norm"):  # transformers 4.x clips inline, through the accelerator
            self._step_end.probe.watch_clip_norm(self.accelerator)
        self.saved_config: dict[str, Any] | None = None  # the run's saved config (train_run's); default: the args
        self._staging = False  # True while a checkpoint is written (under RUN_DIR/.staging/, then renamed)
        self._round_rewards: torch.Tensor | None = None  # TRL's global rewards of the last generation round
        self.add_callback(_StepEndCallback(self._step_end.begin, self._before_update, self._finish_step))
        self._sampler = DynamicSampler(
            self.args,
            self.train_dataset,
            self.reward_func_names,
            self.accelerator,
            group=self.num_generations,
            shuffle=self.shuffle_dataset,
            normalize_then_sum=self.multi_objective_aggregation == "normalize_then_sum",
            pad_token_id=self._tokenizer.pad_token_id,
        )
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
            step = self.state.global_step + 1
            output, sampled = self._sampler.sample(
                len(inputs), self._generation_round, reward_weights=self.reward_weights, step=step
            )
            for key, value in sampled.items():
                self._metrics["train"][key].append(value)
        else:
            output = super()._generate_and_score_completions(inputs)
        if self.model.training:
            # Every step trained on this rollout batch reports its reward, also when TRL generates less than once a step
            trl_metrics = self._metrics["train"]
            keys = [*TRL_ROW_KEYS, *(key for key in trl_metrics if key.startswith(ROW_KEY_PREFIXES))]
            self._step_end.rollout_metrics = {key: trl_metrics[key][-1] for key in keys if trl_metrics.get(key)}
            if self.loss_edits.on_rollout_needed:
                self._rollout_edits(output)
        return output

    def _generation_round(self, inputs: list[dict[str, Any]]) -> tuple[dict[str, Any], torch.Tensor]:
        """One of dynamic sampling's rounds: TRL's rollout of `inputs` and its global rewards."""
        output = super()._generate_and_score_completions(inputs)
        return output, self._round_rewards

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # Kept for dynamic sampling: TRL's rewards of every process (rows x functions), before any normalisation.
        if not self.model.training:
            self._round_rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            return self._round_rewards
        # TRL turns None ("not applicable") into NaN; note where, so that only NaN/inf values count as broken.
        nones = torch.zeros(len(prompts), len(self.reward_funcs), device=self.accelerator.device)
        functions = self.reward_funcs
        self.reward_funcs = [noting_nones(func, nones[:, i]) for i, func in enumerate(functions)]
        try:
            self._round_rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        finally:
            self.reward_funcs = functions
        self._step_end.unscorable.count(self._round_rewards, self.accelerator.gather(nones).bool())  # every rank alike
        return self._round_rewards

    def _sampler_correction(self, inputs: dict[str, Any]) -> torch.Tensor | float:
        corrected = self.use_vllm and self.vllm_importance_sampling_correction and self.loss_type != "vespo"
        return sampler_correction(inputs, corrected)

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
        return normalize_like_trl(
            per_token,
            inputs,
            loss_type=self.loss_type,
            accumulation=self.current_gradient_accumulation_steps,
            max_completion_length=self.max_completion_length,
            world=self.accelerator.num_processes,
            steps_per_generation=self.args.steps_per_generation,
        )

    # ---------------------------------------------------------------- diagnostics
    def _record_micro_batch(self, logps, token_stats: onepass.TokenStats, advantages, inputs) -> None:
        """Add one micro-batch's sums to the step's, and keep the batch on steps that measure the entropy change."""
        self.step_sums.add(step_sums.TOKENS, self._token_sums(logps, token_stats, advantages, inputs))
        if self._step_end.measures(self.state.global_step + 1) or self.args.dynamics_momentum_groups:
            inputs[RAW_ADV_KEY] = per_token(advantages, logps).double()
            inputs[S_MINUS_N_KEY] = stats.discriminator(token_stats.logp, token_stats.entropy) - token_stats.nec
            self._step_end.batches.append(inputs)

    def _token_sums(self, logps, token_stats: onepass.TokenStats, advantages, inputs) -> torch.Tensor:
        epsilons = dict(epsilon_low=self.epsilon_low, epsilon_high=self.epsilon_high)
        correction = self._sampler_correction(inputs)
        return step_sums.token_sums(logps, token_stats, advantages, inputs, **epsilons, sampler_correction=correction)

    # ---------------------------------------------------------------- once per optimizer step (step_end.py)
    def _world(self) -> int:
        return self.accelerator.num_processes

    def _sharded_in_place(self) -> bool:
        """FSDP2: the parameters are shards and the module itself carries the hooks that gather them."""
        return bool(self.is_fsdp_enabled)

    def _check_param_dynamics(self) -> None:
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        self._step_end.probe.check(
            world=self._world(),
            fsdp=self.is_fsdp_enabled,
            fsdp1=self.is_fsdp_enabled and not self.accelerator.is_fsdp2,
            deepspeed=plugin is not None,
            zero3=plugin is not None and plugin.zero_stage == 3,
            loss_type=self.loss_type,
            importance_sampling_level=self.importance_sampling_level,
        )

    def _clip_grad_norm(self, model):
        # The clip factor scales each group's share of the update (param_prediction.clip_factor).
        self._step_end.probe.grad_norm = super()._clip_grad_norm(model)
        return self._step_end.probe.grad_norm

    def _before_update(self) -> None:
        # DDP: the bare module, whose autograd.grad leaves .grad alone. FSDP2 shards in place: the module keeps the
        # hooks that all-gather its parameters, and the gradients come from its own backward (grad_through_hooks).
        model, step = self.accelerator.unwrap_model(self.model), self.state.global_step + 1
        self._step_end.before_update(
            model, self.optimizer, step=step, world=self._world(), sharded=self._sharded_in_place()
        )

    def _finish_step(self) -> None:
        if not self._step_end.metrics_file.started:  # the run directory becomes this run's
            self._step_end.metrics_file.start(self.saved_config or self.args.to_dict())
        reg_sums, draws = self.loss_edits.take_metric_sums(), self.loss_edits.generator
        self._step_end.finish(self.state.global_step, self.state.epoch, reg_sums=reg_sums, draws=draws)

    def end(self) -> None:
        """Trackers closed and the process group left, as transformers' own Trainer.end (5.18 and later; the
        releases before it have none), then the DDP wrapper let go. The wrapper holds the process group: alive, it
        keeps gloo's threads running into interpreter shutdown, where a rank can abort after a finished run (-6)."""
        # Every rank leaves together: one that leaves while another still works (the main process writing the
        # final model) can abort the other's gloo threads.
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()  # all of Trainer.end (tests/test_trl_contract.py)
        group = getattr(self.model_wrapped, "process_group", None)  # DDP's
        self.model_wrapped = self.model  # as before training: the bare module
        gc.collect()  # the wrapper and its reducer sit in reference cycles (their hooks' closures)
        # The group's last reference goes here, not in the reducer: torch then destroys it without holding the GIL,
        # which a gloo thread may still need to let go of a finished collective's tensors (else: a deadlock).
        del group

    @property
    def last_metrics_row(self) -> dict[str, float]:
        """The diagnostics of the last optimizer step (all ranks)."""
        return self._step_end.last_row

    # ---------------------------------------------------------------- for training_curve.py
    def vllm_engine(self) -> Any:
        """TRL's colocated vLLM engine holding the current weights (synced once per step), or None without vLLM."""
        if not self.use_vllm:
            return None
        if self.state.global_step != self._last_loaded_step:
            self.vllm_generation.sync_weights()
            self._last_loaded_step = self.state.global_step
        return self.vllm_generation.llm

    def log_curve_seconds(self, seconds: float) -> None:
        """Wall time of an in-training evaluation (training_curve), logged with the next step's metrics."""
        self._metrics["train"]["curve/seconds"].append(seconds)
