"""EntropyGRPOTrainer: TRL's GRPOTrainer plus per-step token-dynamics diagnostics and entropy regularizers.

The trainer wraps TRL's methods instead of copying them (docs/architecture.md):
- `_compute_loss` hands TRL a shallow copy of the micro-batch and keeps a reference to it, so that
- `_get_per_token_logps_and_entropies`, when TRL calls it for the training loss, can (1) measure the tokens (entropy,
  Cov(logp, A), S, N, predicted entropy change) into local sums, without synchronising the device, taking H, log p
  and N from the logits tiles of TRL's own fused LM head (entropy_rl.onepass), and (2) apply the
  regularizer's edits before TRL reads the advantages: loss weights become per-token advantages (exact for the
  PPO-clip surrogate, whose branch depends only on the sign of A), a KL-Cov penalty is added after TRL's loss with
  TRL's own normaliser, and removed tokens leave the loss mask through TRL's `tool_mask`;
- `_generate_and_score_completions` computes step-level edits (Clip_B / Clip_V, and `stat_scope=global`) once per
  rollout batch over every rank;
- one all-reduce per optimizer step (`_finish_step`, run from a callback after the optimizer step) turns the sums into
  metrics, logged through TRL and appended to `metrics.jsonl`.
tests/test_trl_contract.py fails loudly if a TRL upgrade changes any hooked signature or behaviour relied on here.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from trl import GRPOConfig, GRPOTrainer

from . import dynamic_sampling, dynamics, onepass, rundir, stats
from .config import CLIP_LOSS_TYPES, EntropyGRPOConfig
from .errors import ConfigError, EntropyRLError, RewardError
from .jsonl import append_row, read_rows
from .regularizers import LOCAL, Composite, Edits, TokenBatch
from .regularizers.base import penalty_loss

# TRL generation metrics copied into each metrics.jsonl row (those of the rollout batch the step trains on).
TRL_ROW_KEYS = ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "completions/clipped_ratio")
# Per-function rewards (e.g. the overlong punishment) and dynamic sampling's counts are copied by prefix.
ROW_KEY_PREFIXES = ("rewards/", "dynamic_sampling/")
# Per-token keys the trainer adds to TRL's batch dict; TRL shuffles and splits them along with its own.
# Loss types whose token normaliser is TRL's `num_items_in_batch` (global count of loss tokens).
GLOBAL_COUNT_LOSS_TYPES = ("dapo", "cispo", "vespo")
# VALID_KEY keeps the loss mask from before a filter removed tokens: the diagnostics measure the policy on every
# sampled token, whatever a regularizer does with them.
WEIGHT_KEY, PENALTY_KEY, VALID_KEY = "entropy_rl_weight", "entropy_rl_penalty", "entropy_rl_valid"
# Kept in the micro-batch copy on measuring steps for the parameter-space attribution (entropy_rl/dynamics.py).
RAW_ADV_KEY, S_MINUS_N_KEY = "entropy_rl_raw_advantages", "entropy_rl_s_minus_n"
# |log p - log p_old| beyond this is clamped before TRL forms the ratio (verl's clamp): a stale or corrupted batch
# then gives a huge but finite ratio instead of inf and NaN gradients. exp(20) ~ 5e8, far outside any PPO clip.
MAX_LOG_RATIO = 20.0
NAN_FRAC_KEY = "reward/nan_frac"  # fraction of the rollout batch's completions no reward function could score

logger = logging.getLogger(__name__)
# Spellings of "resume from the newest complete checkpoint in output_dir" (TRL's `True` arrives as a string from a CLI).
LATEST = ("latest", "True", "true")


def check_start(args: EntropyGRPOConfig, resume: str | bool | None) -> str | None:
    """The verified checkpoint to resume from, or None for a fresh start into a directory that holds no run.

    `resume`: a checkpoint folder (verified: CheckpointError names a missing or unreadable file and the previous
    complete checkpoint), "latest" or True (the newest complete checkpoint in output_dir; the ones skipped are
    reported), or None. A start that does not continue output_dir's own run is refused when output_dir holds a run,
    unless args.overwrite_output_dir.
    """
    run_dir = Path(args.output_dir)
    if resume is True or resume in LATEST:
        path, skipped = rundir.latest_checkpoint(run_dir)
        if args.process_index == 0:
            for line in skipped:
                logger.warning("resume_from_checkpoint=%s: skipped %s", resume, line)
        if path is None:
            detail = f" (skipped: {'; '.join(skipped)})" if skipped else ""
            raise rundir.CheckpointError(
                f"invalid config: resume_from_checkpoint={resume!r}: no complete checkpoint in {run_dir}{detail}; "
                "allowed: a directory holding a complete checkpoint-<step>/, or start without it"
            )
        _check_steps_left(str(path), args.max_steps)
        return str(path)
    checkpoint = str(rundir.verify_checkpoint(resume)) if resume else None
    if checkpoint is not None:
        _check_steps_left(checkpoint, args.max_steps)
    own = checkpoint is not None and Path(checkpoint).resolve().parent == run_dir.resolve()
    contents = [] if own or args.overwrite_output_dir else rundir.run_contents(run_dir, args.metrics_file)
    if contents:
        raise rundir.RunDirError(
            f"invalid config: output_dir={str(run_dir)!r} holds a run ({', '.join(contents)}) that this run would "
            "overwrite; allowed: resume it (--resume_from_checkpoint latest), choose another --output_dir, or pass "
            "--overwrite_output_dir true (its files go only when the new run writes its first row)"
        )
    return checkpoint


def _check_steps_left(checkpoint: str, max_steps: int) -> None:
    """Resuming a checkpoint at max_steps would train one step past it (transformers checks the limit after a step)."""
    step = json.loads((Path(checkpoint) / rundir.TRAINER_STATE_FILE).read_text()).get("global_step", 0)
    if 0 < max_steps <= step:
        raise rundir.CheckpointError(
            f"invalid config: resume_from_checkpoint={checkpoint!r} is at step {step} and max_steps={max_steps}: "
            "the run is finished; allowed: a larger --max_steps to train on"
        )


@contextmanager
def _naming_checkpoint_file(checkpoint: str | None, what: str) -> Iterator[None]:
    """A checkpoint file that fails to load (verification cannot read every byte) becomes one line naming it."""
    try:
        yield
    except Exception as err:
        if checkpoint is None or isinstance(err, EntropyRLError | torch.OutOfMemoryError):
            raise
        previous = rundir.previous_complete_checkpoint(checkpoint)
        offer = f"resume from {previous} instead" if previous else "there is no earlier complete checkpoint"
        detail = str(err).splitlines()[0] if str(err) else "no detail"
        raise rundir.CheckpointError(
            f"cannot resume from {checkpoint}: loading {what} failed ({type(err).__name__}: {detail}); {offer}"
        ) from err


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


class AcceleratorReducer:
    """Statistics over every rank of the step (the `Reducer` of entropy_rl.regularizers.base)."""

    def __init__(self, accelerator: Any):
        self.accelerator = accelerator

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(x.double(), reduction="sum")

    def max(self, x: torch.Tensor) -> torch.Tensor:
        return self.accelerator.gather(x.reshape(1)).max()

    def cat(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        sizes = self.accelerator.gather(torch.tensor([x.numel()], device=x.device)).tolist()
        as_float = x.double()  # gather pads with zeros and not every backend moves bool tensors
        padded = self.accelerator.pad_across_processes(as_float, dim=0)
        chunks = self.accelerator.gather(padded).split(padded.numel())
        full = torch.cat([chunk[:size] for chunk, size in zip(chunks, sizes, strict=True)]).to(x.dtype)
        return full, sum(sizes[: self.accelerator.process_index])


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


class EntropyGRPOTrainer(GRPOTrainer):
    """GRPOTrainer with entropy diagnostics and regularizers (`--regularizer`).

    With `regularizer="none"` it trains exactly like GRPOTrainer; the diagnostics only observe. It takes the same
    arguments as GRPOTrainer; a plain GRPOConfig is upgraded to an EntropyGRPOConfig with our defaults (logged), so a
    TRL script changes one import.
    """

    args: EntropyGRPOConfig

    def __init__(self, model: Any, reward_funcs: Any, args: GRPOConfig | None = None, *rest: Any, **kwargs: Any):
        super().__init__(model, reward_funcs, as_entropy_config(args, model), *rest, **kwargs)
        self.regularizer = self.args.build_regularizer()
        # Split the methods by when their statistics are taken: once per rollout batch over every rank (filters, and
        # everything under stat_scope=global), or per loss micro-batch (the authors' verl code).
        parts = getattr(self.regularizer, "parts", [self.regularizer])
        per_step = [p for p in parts if p.step_level or (p.kind == "loss" and self.args.stat_scope == "global")]
        per_micro_batch = [p for p in parts if p.kind == "loss" and p not in per_step]
        self._step_regularizer = Composite(per_step) if per_step else None
        self._loss_regularizer = Composite(per_micro_batch) if per_micro_batch else None
        # When one micro-batch per rank is the whole step, on-policy, the loss forward already sees the rollout
        # policy's tokens: step-level edits can be taken there (over every rank) instead of in an extra forward.
        # Removed tokens then leave through a zero weight and a recounted num_items_in_batch, which is exact for the
        # loss types normalised by that count.
        self._step_edits_at_loss = (
            self._step_regularizer is not None
            and self._loss_regularizer is None
            and self.args.steps_per_generation == 1
            and self.num_iterations == 1
            and self.loss_type in GLOBAL_COUNT_LOSS_TYPES
        )
        if not self.regularizer.uses_ppo_clip:  # KL-Cov optimises the unclipped surrogate (Cui et al.)
            self.epsilon_low, self.epsilon_high = 1.0, math.inf
        # Clip-Cov's random choice is reproducible; with stat_scope=global every rank draws the same global choice
        self._generator = torch.Generator().manual_seed(self.args.seed)
        self._reducer = AcceleratorReducer(self.accelerator)

        self._loss_inputs: dict[str, Any] | None = None  # the micro-batch whose loss is being computed
        self._penalty: torch.Tensor | None = None  # KL-Cov per-token penalty of that micro-batch
        self._step_penalty_coef = 0.0  # its coefficient when the penalised tokens were chosen per step
        self._step_sums: torch.Tensor | None = None  # stats.SUM_FIELDS accumulated over the step's micro-batches
        self._reg_sums: dict[str, torch.Tensor] = {}  # regularizer metrics: name -> [sum, count]
        self._step_batches: list[dict[str, Any]] = []  # kept only on steps that measure the entropy change
        self._dynamics: tuple[list[float], list[float]] = ([], [])  # (predicted, measured) entropy changes
        self._dynamics_param: list[float] = []  # parameter-space predictions of the same steps
        self._param_prediction: dynamics.ParamPrediction | None = None  # the measured step's, until it ends
        self._grad_norm: float | None = None  # pre-clip gradient norm of the step about to be taken
        self._check_param_dynamics()
        self._metrics_path = rundir.metrics_path(self.args.output_dir, {"metrics_file": self.args.metrics_file})
        self._rows_started = False  # the first step of this train() call makes the run directory this run's
        self._start_step = 0  # the step train() started from (the resumed checkpoint's)
        self.saved_config: dict[str, Any] | None = None  # the run's saved config (train_run's); default: the args
        self._staging = False  # True while a checkpoint is written (under RUN_DIR/.staging/, then renamed)
        self._nan_frac = 0.0  # of the latest rollout batch
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
        if self.args.curve_benchmarks:
            from .training_curve import CurveCallback

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
        loss_time = self._step_regularizer if self._step_edits_at_loss else self._loss_regularizer
        wants_nec = loss_time is not None and "nec" in loss_time.needs
        call = (model, input_ids, attention_mask, logits_to_keep, *args)
        if not is_loss_call:
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
        self._apply_edits(logps, entropies.detach(), None if token_stats is None else token_stats.nec, inputs)
        if self.args.diagnostics:
            self._record_micro_batch(logps.detach(), token_stats, advantages, inputs)
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
            self._rollout_metrics[NAN_FRAC_KEY] = self._nan_frac
            if self._step_regularizer is not None and not self._step_edits_at_loss:
                self._step_level_edits(output)
        return output

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # Kept for dynamic sampling: TRL's rewards of every process (rows x functions), before any normalisation.
        self._round_rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self.model.training:
            self._count_unscorable(self._round_rewards)  # gathered over every rank: each rank decides alike
        return self._round_rewards

    def _count_unscorable(self, rewards_per_func: torch.Tensor) -> None:
        """Count completions that no reward function scored (TRL gives them zero advantage); stop a run of such
        batches, which would otherwise train to the end on nothing."""
        unscorable = torch.isnan(rewards_per_func).all(dim=1)
        self._nan_frac = unscorable.float().mean().item()
        self._metrics["train"][NAN_FRAC_KEY].append(self._nan_frac)
        if self._nan_frac < 1.0:
            self._nan_batches = []
            return
        self._nan_batches.append(self.state.global_step + 1)
        limit = self.args.max_nan_reward_batches
        logger.warning(
            "step %d: every reward function returned NaN/None for all %d completions (%d such batches in a row%s)",
            self._nan_batches[-1],
            unscorable.numel(),
            len(self._nan_batches),
            f"; the run stops at {limit}" if limit else "",
        )
        if limit and len(self._nan_batches) >= limit:
            raise RewardError(
                f"reward_funcs returned NaN/None for every completion in {len(self._nan_batches)} rollout batches in "
                f"a row (steps {self._nan_batches[0]}-{self._nan_batches[-1]}); such batches train on zero "
                "advantages. Check the reward functions and the dataset columns they read "
                f"(max_nan_reward_batches={limit}; 0 never stops)"
            )

    # ---------------------------------------------------------------- dynamic sampling (DAPO's filter_groups)
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

    def _sampler_correction(self, inputs: dict[str, Any]) -> torch.Tensor | float:
        """TRL's vLLM importance-sampling weight of each token (1 without vLLM): the factor TRL's `_compute_loss`
        multiplies every per-token policy loss by, so that the KL-Cov penalty and the diagnostics' predicted entropy
        change weigh the tokens as the update does. TRL applies it only under these conditions (not for vespo)."""
        ratio = inputs.get("importance_sampling_ratio")
        corrected = self.use_vllm and self.vllm_importance_sampling_correction and self.loss_type != "vespo"
        return ratio if corrected and ratio is not None else 1.0

    # ---------------------------------------------------------------- regularizers
    def _token_batch(self, logps, old_logps, entropies, nec, inputs) -> TokenBatch:
        return TokenBatch(
            logps=logps,
            old_logps=old_logps,
            advantages=inputs["advantages"],
            mask=self._loss_mask(inputs),
            entropies=entropies,
            nec=nec,
            epsilon_low=self.epsilon_low,
            epsilon_high=self.epsilon_high,
        )

    def _apply_edits(self, logps, entropies, nec, inputs) -> None:
        """Turn the micro-batch's edits into what TRL's loss reads: per-token advantages and an extra penalty."""
        old = inputs.get("old_per_token_logps")
        batch = self._token_batch(logps, logps.detach() if old is None else old, entropies, nec, inputs)
        if self._step_edits_at_loss:
            edits = self._step_regularizer.edits(batch, self._reducer, self._generator)
            self._add_reg_metrics(edits)
            if edits.keep is not None:
                kept = self._loss_mask(inputs) * edits.keep
                edits.weight = edits.keep.to(logps.dtype) if edits.weight is None else edits.weight * edits.keep
                inputs["num_items_in_batch"] = self.accelerator.gather(kept.sum()).sum()
        elif self._loss_regularizer is not None:
            edits = self._loss_regularizer.edits(batch, LOCAL, self._generator)
            self._add_reg_metrics(edits)
        else:
            edits = Edits(
                weight=inputs.get(WEIGHT_KEY), penalty=inputs.get(PENALTY_KEY), penalty_coef=self._step_penalty_coef
            )
        if edits.weight is not None:
            inputs["advantages"] = batch.advantages * edits.weight
        if edits.penalty is not None:
            self._penalty = penalty_loss(batch, edits)

    @torch.no_grad()
    def _step_level_edits(self, output: dict[str, Any]) -> None:
        """Edits over the whole rollout batch of every rank, from the rollout policy: one no-grad forward."""
        logps, entropies, nec = self._rollout_policy_stats(output)
        batch = self._token_batch(logps, logps, entropies, nec, output)
        edits = self._step_regularizer.edits(batch, self._reducer, self._generator)
        self._add_reg_metrics(edits)
        if edits.weight is not None:
            output[WEIGHT_KEY] = edits.weight
        if edits.penalty is not None:
            output[PENALTY_KEY] = edits.penalty
            self._step_penalty_coef = edits.penalty_coef
        if edits.keep is not None:
            keep = edits.keep.to(output["completion_mask"].dtype)
            output[VALID_KEY] = self._loss_mask(output)
            output["tool_mask"] = output["tool_mask"] * keep if "tool_mask" in output else keep
            # DAPO-style losses divide by the global count of loss tokens: recount what is left.
            local = self._loss_mask(output).sum()
            output["num_items_in_batch"] = self.accelerator.gather(local).sum()

    def _rollout_policy_stats(self, output: dict[str, Any]):
        ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        keep = output["completion_ids"].size(1)
        call = dict(batch_size=self.args.per_device_train_batch_size, compute_entropy=True)
        if "nec" not in self._step_regularizer.needs:
            logps, entropies, _ = super()._get_per_token_logps_and_entropies(self.model, ids, attention, keep, **call)
            return logps, entropies, None
        (logps, entropies, _), token_stats = self._one_pass(self.model, ids, attention, keep, **call)
        return logps, entropies, token_stats.nec

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

    def _add_reg_metrics(self, edits: Edits) -> None:
        for name, (total, count) in edits.metrics.items():
            pair = torch.stack([total.double(), count.double()])
            self._reg_sums[name] = pair if name not in self._reg_sums else self._reg_sums[name] + pair

    # ---------------------------------------------------------------- diagnostics
    def _loss_mask(self, inputs: dict[str, Any]) -> torch.Tensor:
        mask = inputs["completion_mask"]
        return mask * inputs["tool_mask"] if "tool_mask" in inputs else mask

    def _valid_mask(self, inputs: dict[str, Any]) -> torch.Tensor:
        """Every sampled completion token, including those a filter regularizer removed from the loss."""
        return inputs[VALID_KEY] if VALID_KEY in inputs else self._loss_mask(inputs)

    def _record_micro_batch(self, logps, token_stats: onepass.TokenStats, advantages, inputs) -> None:
        """Sums of one micro-batch. H, S and N come from the one pass (shifted sums: precise at any logit size, and
        S - N from one set of logits); log p is TRL's, the one the ratio and the update use."""
        mask = self._valid_mask(inputs).bool()
        advantages = stats.per_token(advantages, logps)
        old = inputs.get("old_per_token_logps")
        ratio = torch.ones_like(logps) if old is None else torch.exp(logps - old)
        unclipped = stats.unclipped_mask(ratio, advantages, self.epsilon_low, self.epsilon_high)
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
            update_advantages=stats.per_token(inputs["advantages"], logps)
            * self._loss_mask(inputs)
            * self._sampler_correction(inputs),
        )
        self._step_sums = sums if self._step_sums is None else self._step_sums + sums
        if self._measures_dynamics(self.state.global_step + 1):
            inputs[RAW_ADV_KEY] = advantages
            inputs[S_MINUS_N_KEY] = s - token_stats.nec
            self._step_batches.append(inputs)

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
        if not (self.args.diagnostics or self._reg_sums):
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
        reg_names = sorted(self._reg_sums)
        parts.extend(self._reg_sums[name].to(device) for name in reg_names)
        self._step_sums, self._step_batches, self._reg_sums = None, [], {}
        # One host synchronisation per step: everything below is plain Python floats.
        totals = self.accelerator.reduce(torch.cat(parts), reduction="sum").tolist()

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
                row.update(dynamics.step_values(totals[offset : offset + dynamics.VALUES], tokens, self._world()))
                offset += dynamics.VALUES
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

    # ---------------------------------------------------------------- parameter-space dynamics (entropy_rl/dynamics.py)
    def _world(self) -> int:
        return self.accelerator.num_processes

    def _check_param_dynamics(self) -> None:
        if not (self.args.dynamics_param and self.args.dynamics_every):
            return
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if (self.is_fsdp_enabled and not self.accelerator.is_fsdp2) or (plugin is not None and plugin.zero_stage == 3):
            raise ConfigError(
                "invalid config: dynamics_param=True with FSDP version 1 / ZeRO-3; allowed: dynamics_param=False "
                "there, or fsdp_version 2 (supported: one process, DDP, ZeRO-1/2, FSDP2)"
            )

    def _sharded_in_place(self) -> bool:
        """FSDP2: the parameters are shards and the module itself carries the hooks that gather them."""
        return bool(self.is_fsdp_enabled)

    def _clip_grad_norm(self, model):
        # The clip factor scales each group's share of the update (dynamics.clip_factor).
        self._grad_norm = super()._clip_grad_norm(model)
        return self._grad_norm

    def _param_forward(self, model, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p, entropy) of the micro-batch's completion tokens under the current parameters, with the graph."""
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model, ids, attention, inputs["completion_ids"].size(1), compute_entropy=True
        )
        return logps, entropies

    def _before_update(self) -> None:
        """On measuring steps, just before optimizer.step(): grad of the entropy sum, and each group's share."""
        if not (self.args.dynamics_param and self._measures_dynamics(self.state.global_step + 1)):
            return
        # DDP: the bare module, whose autograd.grad leaves .grad alone. FSDP2 shards in place: the module keeps the
        # hooks that all-gather its parameters, and the gradients come from its own backward (grad_through_hooks).
        model = self.accelerator.unwrap_model(self.model)
        sharded = self._sharded_in_place()
        prediction = dynamics.ParamPrediction(dynamics.trainable(model), sharded_world=self._world() if sharded else 0)
        batches = self._step_batches
        reuse = len(batches) == 1 and not sharded  # one micro-batch: its graph serves both passes
        kept = []
        for inputs in batches:
            logps, entropies = self._param_forward(model, inputs)
            prediction.add_entropy((entropies * self._valid_mask(inputs)).sum(), retain_graph=reuse)
            kept.append(logps if reuse else None)
        scale = dynamics.clip_factor(self._grad_norm, self.args.max_grad_norm) / self._world()  # DDP averages ranks
        reduce = (lambda x: self.accelerator.reduce(x, reduction="sum")) if self._world() > 1 else None
        attributable = self.loss_type in CLIP_LOSS_TYPES and self.importance_sampling_level == "token"
        optimizer = self.optimizer if attributable else None
        if prediction.set_direction(optimizer, scale=scale, all_reduce=reduce):
            for inputs, logps in zip(batches, kept, strict=True):
                if not sharded:
                    logps = self._param_forward(model, inputs)[0] if logps is None else logps
                    prediction.add_groups(self._group_losses(logps, inputs))
                    continue
                # Every rank runs one backward per group (a collective), a fresh forward each: FSDP frees the
                # gathered parameters after a backward.
                for name in dynamics.GROUPS:
                    losses = self._group_losses(self._param_forward(model, inputs)[0], inputs, every_group=True)
                    prediction.add_groups({name: losses[name]})
        self._param_prediction = prediction

    def _group_losses(
        self, logps: torch.Tensor, inputs: dict[str, Any], *, every_group: bool = False
    ) -> dict[str, torch.Tensor]:
        """The part of TRL's PPO-clip loss that each token group of dynamics.GROUPS contributes (same normaliser);
        groups without tokens are left out unless `every_group` (a zero loss then)."""
        old = inputs.get("old_per_token_logps")
        ratio = torch.ones_like(logps) if old is None else torch.exp(logps.detach() - old)
        used = stats.per_token(inputs["advantages"], logps).to(logps.dtype)
        raw = stats.per_token(inputs[RAW_ADV_KEY], logps).to(logps.dtype)
        unclipped = stats.unclipped_mask(ratio, used, self.epsilon_low, self.epsilon_high)
        valid = self._valid_mask(inputs)
        masks = dynamics.token_groups(
            raw_advantages=raw,
            s_minus_n=inputs[S_MINUS_N_KEY],
            loss_mask=self._loss_mask(inputs),
            valid_mask=valid,
            used_advantages=used,
            unclipped=unclipped,
        )
        coefficient = {name: dynamics.surrogate_coefficient(used, ratio, unclipped) for name in dynamics.QUADRANTS}
        coefficient["removed"] = -(raw * ratio)  # had it stayed, unclipped
        coefficient["clipped"] = -(used * ratio)  # had the clip passed its gradient
        # Removed tokens left TRL's loss mask: count them over every sampled token, with the same normaliser.
        counted = {"removed": dict(inputs, completion_mask=valid, tool_mask=torch.ones_like(valid))}
        return {
            name: self._normalize_like_trl(coefficient[name] * logps * mask, counted.get(name, inputs))
            for name, mask in masks.items()
            if every_group or mask.any()
        }

    def log_curve_seconds(self, seconds: float) -> None:
        """Wall time of an in-training evaluation (training_curve), logged with the next step's metrics."""
        self._metrics["train"]["curve/seconds"].append(seconds)

    # ---------------------------------------------------------------- training, checkpoints
    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        """TRL's train, after checking what it would resume from or write over (`check_start`)."""
        resume_from_checkpoint = check_start(self.args, resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _get_output_dir(self, trial) -> str:
        # While a checkpoint is written, transformers and TRL write it into RUN_DIR/.staging/checkpoint-<step>/.
        run_dir = super()._get_output_dir(trial)
        return str(rundir.staging_dir(run_dir)) if self._staging else run_dir

    def _save_checkpoint(self, model, trial):
        """Write the whole checkpoint (model, optimizer, scheduler, RNG, trainer state, TRL's and our state) into
        RUN_DIR/.staging/, list it in a manifest, then rename it into place and only then rotate old ones: a
        checkpoint-<step>/ folder is complete by construction, and the last complete one survives a failed save."""
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged, final = rundir.staging_dir(run_dir) / name, run_dir / name
        if self.args.should_save:
            rundir.clear_staging(run_dir)
        self.accelerator.wait_for_everyone()
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
            self._save_own_state(staged)
            self.accelerator.wait_for_everyone()  # every rank's files are there
            if self.args.should_save:
                self._repoint_best_checkpoint(staged, final)
                rundir.write_manifest(staged, self.state.global_step, self.accelerator.num_processes)
                rundir.publish_checkpoint(staged, final)
        except Exception as err:
            failure = self._save_failure(err, staged, final)
            if failure is err:
                raise
            raise failure from err  # a full disk or a dead file system: one line naming the file
        finally:
            self._staging = False
        if self.args.should_save:
            limit, best = self.args.save_total_limit, self.state.best_model_checkpoint
            rotate_checkpoints(
                output_dir=str(run_dir), save_total_limit=limit, best_model_checkpoint=best, use_mtime=True
            )
        self.accelerator.wait_for_everyone()

    def _save_own_state(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        state = {"generator": self._generator.get_state()}
        torch.save(state, folder / rundir.STATE_FILE.format(rank=self.accelerator.process_index))

    def _repoint_best_checkpoint(self, staged: Path, final: Path) -> None:
        """transformers recorded the best checkpoint's staging path when it is this one: record where it will be."""
        if self.state.best_model_checkpoint and Path(self.state.best_model_checkpoint) == staged:
            self.state.best_model_checkpoint = str(final)
            self.state.save_to_json(str(staged / rundir.TRAINER_STATE_FILE))

    @staticmethod
    def _save_failure(err: Exception, staged: Path, final: Path) -> Exception:
        """Write errors become a CheckpointError naming the file (torch reports a full disk as a RuntimeError
        without a path: the newest file in the staging folder is the one being written); others pass unchanged."""
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        write_error = isinstance(err, OSError) or any(
            mark in text for mark in ("inline_container", "PytorchStreamWriter", "I/O error", "No space left")
        )
        if not write_error:
            return err
        files = [p for p in staged.rglob("*") if p.is_file()] if staged.is_dir() else []
        path = getattr(err, "filename", None) or (max(files, key=lambda p: p.stat().st_mtime) if files else staged)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else text
        free = shutil.disk_usage(staged.parent if staged.parent.exists() else final.parent).free
        if free < 2**20:
            reason += "; the device is full"
        shutil.rmtree(staged, ignore_errors=True)  # a partial checkpoint only takes space
        return rundir.CheckpointError(
            f"cannot write checkpoint {final.name}: {path}: {reason} ({free / 2**20:.1f} MiB free on that device); "
            f"the complete checkpoints and metrics rows written so far are intact (resume with "
            "--resume_from_checkpoint latest)"
        )

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        with _naming_checkpoint_file(resume_from_checkpoint, "the model weights"):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_rng_state(self, checkpoint):
        with _naming_checkpoint_file(checkpoint, "the RNG state (rng_state*.pth)"):
            super()._load_rng_state(checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint):
        with _naming_checkpoint_file(checkpoint, "optimizer.pt / scheduler.pt / the regularizer state"):
            super()._load_optimizer_and_scheduler(checkpoint)
            if checkpoint is not None:
                path = Path(checkpoint) / rundir.STATE_FILE.format(rank=self.accelerator.process_index)
                state = torch.load(path, weights_only=True)  # tensors only: never unpickle code from a checkpoint
                self._generator.set_state(state["generator"])

    # ---------------------------------------------------------------- metrics.jsonl
    def _open_metrics_file(self) -> None:
        """Read the rows the (possibly resumed) run continues from; nothing is rewritten before the first new row."""
        self._rows_started = False
        self._start_step = start = self.state.global_step
        if not self.accelerator.is_main_process:
            return
        kept = [row for row in read_rows(self._metrics_path) if row.get("step", math.inf) <= start] if start else []
        measured = [r for r in kept if "dynamics/measured_dH" in r]
        self._dynamics = ([r["dynamics/predicted_dH"] for r in measured], [r["dynamics/measured_dH"] for r in measured])
        param = [r.get("dynamics/predicted_dH_param") for r in measured]
        self._dynamics_param = [x for x in param if x is not None]
        self._step_started = time.perf_counter()

    def _start_rows(self) -> None:
        """After the first new step: rows and checkpoints after the resumed step (all, on a fresh start) go and the
        config is written. A run that fails before its first step leaves the directory as it found it."""
        self._rows_started = True
        if not self.accelerator.is_main_process:
            return
        run_dir = Path(self.args.output_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            rundir.start_rows(run_dir, self.args.metrics_file, self._start_step)
            rundir.write_config(run_dir, self.saved_config or self.args.to_dict())
        except OSError as err:
            raise self._write_failure(err, self._metrics_path, "the run's first row") from err

    def _write_failure(self, err: OSError, path: Path, what: str) -> EntropyRLError:
        """A full disk (or another OS error) while writing the run directory: one line naming the file."""
        free = shutil.disk_usage(self.args.output_dir).free
        return rundir.RunDirError(
            f"cannot write {err.filename or path} ({what}): {err.strerror or err} ({free / 2**20:.1f} MiB free on "
            "that device); the rows written so far are intact"
        )

    def _write_row(self, step: int, row: dict[str, float]) -> None:
        if not self.accelerator.is_main_process:
            return
        now = time.perf_counter()
        full = {"step": step, "epoch": self.state.epoch, "wall_time": now - self._step_started}
        self._step_started = now
        full.update(self._rollout_metrics)
        full.update(row)
        try:
            append_row(self._metrics_path, full)
        except OSError as err:  # a full disk: stop with the file named; a torn last line is ignored by readers
            raise self._write_failure(err, self._metrics_path, f"row of step {step}") from err
