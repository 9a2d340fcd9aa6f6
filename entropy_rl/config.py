"""EntropyGRPOConfig: TRL's GRPOConfig plus the entropy diagnostics and regularizer fields.

Every field's `help` doubles as CLI documentation (`entropy-rl train --help`), as in TRL. The built-in regularizers'
hyperparameters are written out below, one group per method, by name and type; each takes its default and help
(prefixed with the method's name) from the method's dataclass field (`_parameter_field`; tests/test_config.py fails
when the two drift apart). A method added later needs no field here: its parameters go through `regularizer_kwargs`.

The fields come in option groups, mixin dataclasses that each hold their checks; EntropyGRPOConfig puts them on top of
GRPOConfig and runs the checks, with those that span groups or concern TRL's own options.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig

from .errors import ConfigError, check
from .regularizers import REGISTRY, EditSchedule, NativeRegularizer, parameter_names, parse_names

STAT_SCOPES = ("micro_batch", "global")

# Ranges of TRL's and transformers' numeric options that GRPOConfig / TrainingArguments accept at config time (TRL
# 1.16, transformers 5: a negative or NaN learning rate then fails deep inside torch, or trains on nonsense):
# field -> (test, what is allowed). Options they refuse themselves are not re-checked; num_generations is here because
# TRL divides by it before refusing < 2 (0 is a ZeroDivisionError, None a TypeError). Every float field must also be
# finite (`_check_numbers`).
NUMERIC_RANGES: dict[str, tuple[typing.Callable[[typing.Any], bool], str]] = {
    "learning_rate": (lambda v: v >= 0, "a finite number >= 0"),
    "weight_decay": (lambda v: v >= 0, "a finite number >= 0"),
    "adam_beta1": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "adam_beta2": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "adam_epsilon": (lambda v: v > 0, "a finite number > 0"),
    "max_grad_norm": (lambda v: v >= 0, "a finite number >= 0 (0 disables clipping)"),
    "num_train_epochs": (lambda v: v > 0, "a finite number > 0"),
    "temperature": (lambda v: v > 0, "a finite number > 0"),
    "top_p": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "beta": (lambda v: v >= 0, "a finite number >= 0"),
    "epsilon": (lambda v: v >= 0, "a finite number >= 0"),
    "epsilon_high": (lambda v: v is None or v >= 0, "a finite number >= 0, or unset (= epsilon)"),
    "per_device_train_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "gradient_accumulation_steps": (lambda v: v >= 1, "an integer >= 1"),
    "max_completion_length": (lambda v: v >= 1, "an integer >= 1"),
    "num_iterations": (lambda v: v >= 1, "an integer >= 1"),
    "max_steps": (lambda v: v == -1 or v >= 1, "an integer >= 1, or -1 (train for num_train_epochs)"),
    "num_generations": (lambda v: v >= 2, "an integer >= 2 (a group needs two completions to compare)"),
}

# TRL 1.16's string options with a fixed set of values (grpo_trainer.py), refused here instead of at the first step.
TRL_CHOICES: dict[str, tuple[str, ...]] = {
    "loss_type": ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"),
    "scale_rewards": ("group", "batch", "none"),
    "importance_sampling_level": ("token", "sequence"),
    "multi_objective_aggregation": ("sum_then_normalize", "normalize_then_sum"),
    "vllm_mode": ("server", "colocate"),
}

__all__ = ["ConfigError", "EntropyGRPOConfig"]


def _regularizer_help() -> str:
    # Token-level methods first, then the switches of TRL's own options.
    names = sorted(REGISTRY, key=lambda name: issubclass(REGISTRY[name], NativeRegularizer))
    return "Entropy regularizer(s), '+'-joined: " + ", ".join(["none", *names])


def _parameter_field(name: str) -> typing.Any:
    """The config's field for a built-in method's parameter `name`: the method's default, its help prefixed with the
    method's name (the flag's name and type are written out where this is called)."""
    for method in REGISTRY.values():
        for spec in dataclasses.fields(method):
            if spec.name == name:
                help_text = f"{method.name}: {spec.metadata['help']}"
                return field(default=spec.default, default_factory=spec.default_factory, metadata={"help": help_text})
    raise TypeError(f"no registered regularizer has a parameter {name!r}")


@dataclass
class DiagnosticsOptions:
    """The per-step token-dynamics diagnostics, the measured entropy change and the metrics file."""

    diagnostics: bool = field(
        default=True,
        metadata={
            "help": "Compute the per-step token-dynamics diagnostics (entropy, Cov(logp, A), discriminator S and N, "
            "predicted entropy change, quadrant fractions) over all valid completion tokens of the step on all ranks, "
            "log them through TRL and append them to OUTPUT_DIR/metrics.jsonl. Observation only: gradients are "
            "unchanged."
        },
    )
    dynamics_every: int = field(
        default=10,
        metadata={
            "help": "Every this many optimizer steps, re-evaluate the step's batch right after the update and log the "
            "measured entropy change next to the predicted one (dynamics/measured_dH). 0 disables it. Costs one "
            "extra forward pass over the batch on those steps."
        },
    )
    dynamics_param: bool = field(
        default=True,
        metadata={
            "help": "On the steps that measure the entropy change: also log the parameter-space first-order prediction "
            "dynamics/predicted_dH_param (grad of the batch's mean token entropy . the parameter change the optimizer "
            "applied) and its split by token group dynamics/dH_param/<group> (docs/metrics.md). Costs one forward and "
            "up to 7 backward passes over the step's batch (7 forward and backward passes under FSDP2), and two copies "
            "of the trainable parameters, on those steps. Not available under FSDP version 1 or ZeRO-3."
        },
    )
    dynamics_momentum_groups: bool = field(
        default=False,
        metadata={
            "help": "With dynamics_param under SGD or Adam/AdamW: also split the part of the update carried by the "
            "optimizer's momentum by the token groups whose gradients built it (per-group copies of the first moment, "
            "dynamics/dH_param/carried/<group>), and log weight decay and the gradient outside the groups as their "
            "own parts, so dynamics/dH_param/other is float noise (docs/metrics.md). Costs, on every step, one "
            "forward and up to 4 backward passes over the step's batch, and 6 copies of the trainable parameters "
            "(plus up to 7 transient ones). One process only."
        },
    )
    dynamics_second_order: bool = field(
        default=False,
        metadata={
            "help": "With dynamics_momentum_groups: also take the gradient of the batch's entropy after the update and "
            "log the prediction's second-order (curvature) term 1/2 (grad H after - grad H before) . d as "
            "dynamics/dH_param/second_order, split by update part (dynamics/dH_param/second_order/<part>), and the "
            "second-order prediction dynamics/predicted_dH_param_2nd (docs/metrics.md). Costs, on measuring steps, "
            "one forward and one backward pass over the step's batch after the update, and one copy of the trainable "
            "parameters per part (11) until then."
        },
    )
    metrics_file: str = field(
        default="metrics.jsonl",
        metadata={"help": "File name, inside output_dir, of the per-step metrics (one JSON row per optimizer step)."},
    )

    def _check_diagnostics(self) -> None:
        """The dynamics options need the diagnostics; the metrics file stays inside output_dir."""
        check(self.dynamics_every >= 0, "dynamics_every", self.dynamics_every, "an integer >= 0 (0 disables)")
        check(
            bool(self.metrics_file) and "/" not in self.metrics_file,
            "metrics_file",
            self.metrics_file,
            "a plain file name inside output_dir",
        )
        check(
            self.dynamics_every == 0 or self.diagnostics,
            "dynamics_every",
            self.dynamics_every,
            "0 when diagnostics=False (the measured change is compared with the diagnostics' prediction)",
        )
        check(
            not self.dynamics_momentum_groups or (self.dynamics_param and self.dynamics_every > 0),
            "dynamics_momentum_groups",
            self.dynamics_momentum_groups,
            "False unless dynamics_param=True and dynamics_every > 0 (it splits the parameter-space prediction)",
        )
        check(
            not self.dynamics_second_order or self.dynamics_momentum_groups,
            "dynamics_second_order",
            self.dynamics_second_order,
            "False unless dynamics_momentum_groups=True (its split needs every part of the update)",
        )


@dataclass
class RunGuardOptions:
    """The run's guards: training over another run's output_dir, and stopping on rewards that are never finite."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train into an output_dir that holds another run (metrics rows, checkpoints or final/) without "
            "resuming it. Without it such a run is refused. The old run's rows, checkpoints, final/ model and curve "
            "are removed only when the new run writes its first metrics row. (transformers 5 dropped its option of "
            "this name; this one revives it.)"
        },
    )
    max_nan_reward_batches: int = field(
        default=3,
        metadata={
            "help": "Stop the run with an error after this many rollout batches in a row in which no completion got "
            "a finite reward and each got a NaN or inf value (a broken reward; such a batch trains on zero "
            "advantages). None, TRL's 'not applicable', never counts: TRL warns and goes on. Each row of "
            "metrics.jsonl logs the fraction of completions without a finite reward as reward/nan_frac. 0 never "
            "stops."
        },
    )

    def _check_run_guards(self) -> None:
        """A count of batches, 0 for never."""
        nan_batches = self.max_nan_reward_batches
        check(nan_batches >= 0, "max_nan_reward_batches", nan_batches, "an integer >= 0 (0 never stops)")


@dataclass
class RegularizerOptions:
    """The regularizer selection, its statistics' scope, and the built-in methods' parameters (docs/regularizers.md)."""

    regularizer: str = field(
        default="none",
        metadata={"help": _regularizer_help() + " (e.g. 'clip_b+steer'). See docs/regularizers.md."},
    )
    stat_scope: str = field(
        default="micro_batch",
        metadata={
            "help": "Tokens the statistics of clip_cov / kl_cov / steer span: 'micro_batch' (each loss micro-batch on "
            "each rank, as the authors' verl code) or 'global' (the whole step batch on all ranks, from the rollout "
            "policy, once per generation; one extra no-grad forward). clip_b / clip_v are always global."
        },
    )
    regularizer_kwargs: dict[str, typing.Any] | str | None = field(
        default=None,
        metadata={
            "help": "Parameters of the selected regularizer(s) that have no flag of their own (a method added in your "
            "own file), by name: a JSON object on the command line (--regularizer_kwargs "
            "'{\"my_method_alpha\": 0.5}', as TRL's model_init_kwargs), a mapping in a recipe. A parameter with a flag "
            "is set by its flag."
        },
    )

    # ------------------------------------------------------------ the regularizers' parameters (docs/regularizers.md)
    # Each method's dataclass fields in entropy_rl/regularizers/<method>.py, by name and type; default and help come
    # from there, the help prefixed with the method's name (tests/test_config.py checks that they agree).
    # entropy_bonus, clip_higher and high_entropy_tokens have none: they switch TRL's own entropy_coef /
    # use_adaptive_entropy, epsilon_high and top_entropy_quantile on.

    # Clip_B (clip_b.py)
    clip_b_mu: float = _parameter_field("clip_b_mu")

    # Clip-Cov (clip_cov.py)
    clip_cov_ratio: float = _parameter_field("clip_cov_ratio")
    clip_cov_lb: float = _parameter_field("clip_cov_lb")
    clip_cov_ub: float = _parameter_field("clip_cov_ub")

    # Clip_V (clip_v.py)
    clip_v_mu: float = _parameter_field("clip_v_mu")
    clip_v_max_frac: float = _parameter_field("clip_v_max_frac")

    # KL-Cov (kl_cov.py)
    kl_cov_ratio: float = _parameter_field("kl_cov_ratio")
    kl_cov_coef: float = _parameter_field("kl_cov_coef")

    # STEER (steer.py)
    steer_lambda_min: float = _parameter_field("steer_lambda_min")
    steer_lambda_max: float = _parameter_field("steer_lambda_max")
    steer_mapping: str = _parameter_field("steer_mapping")
    steer_estimator: str = _parameter_field("steer_estimator")

    def edit_schedule(self) -> EditSchedule:
        """The chosen methods with their parameters, split by when they run (refuses invalid parameters)."""
        names = parse_names(self.regularizer)
        params = {name: getattr(self, name) for method in names for name in self._flag_parameters(method)}
        params.update(self.regularizer_kwargs or {})
        return EditSchedule(self.regularizer, params, stat_scope=self.stat_scope)

    def _flag_parameters(self, method: str) -> list[str]:
        """The parameters of `method` written out as fields of this config (the rest come in regularizer_kwargs)."""
        fields = {spec.name for spec in dataclasses.fields(self)}
        return [name for name in parameter_names(method) if name in fields]

    def _apply_native_regularizers(self) -> None:
        """Switch TRL's own option on for a named native regularizer; name the method of a TRL option set by hand.

        TRL's fields keep TRL's meaning (`entropy_coef=0.01` is TRL's entropy bonus, with or without the flag); the
        name only labels the run by what it does."""
        names = parse_names(self.regularizer)
        for method in (m for m in REGISTRY.values() if issubclass(m, NativeRegularizer)):
            is_set = method.option_is_set(self)
            if method.name in names and not is_set:
                for key, value in method.trl_defaults.items():
                    setattr(self, key, value)
            elif method.name not in names and is_set and method.names_run:
                names.append(method.name)
        self.regularizer = "+".join(names) if names else "none"

    def _parse_regularizer_kwargs(self) -> None:
        """JSON from the command line, as TRL's dict fields (`_VALID_DICT_FIELDS`), but an error names the field."""
        value, allowed = self.regularizer_kwargs, "a JSON object of parameter names and values"
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                check(False, "regularizer_kwargs", self.regularizer_kwargs, allowed)
        check(value is None or isinstance(value, dict), "regularizer_kwargs", self.regularizer_kwargs, allowed)
        self.regularizer_kwargs = value

    def _check_regularizer(self, names: list[str]) -> None:
        """The selected methods' parameters (flags and regularizer_kwargs) and stat_scope."""
        self._check_unselected_parameters(names)
        self._check_regularizer_kwargs(names)
        self.edit_schedule()  # validates every parameter of the chosen methods
        check(self.stat_scope in STAT_SCOPES, "stat_scope", self.stat_scope, f"one of {STAT_SCOPES}")

    def _check_unselected_parameters(self, names: list[str]) -> None:
        """A parameter of a method that --regularizer does not select would be silently ignored: refuse it."""
        for method in REGISTRY.values():
            if method.name in names:
                continue
            flags = self._flag_parameters(method.name)  # one in regularizer_kwargs must belong to a selected method
            for spec in (spec for spec in dataclasses.fields(method) if spec.name in flags):
                default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
                value = getattr(self, spec.name)
                if value != default:
                    raise ConfigError(
                        f"invalid config: {spec.name}={value!r} is a parameter of {method.name}, which "
                        f"regularizer={self.regularizer!r} does not select; allowed: add {method.name} to "
                        f"--regularizer, or leave {spec.name} at its default ({default!r})"
                    )

    def _check_regularizer_kwargs(self, names: list[str]) -> None:
        """Every key a parameter, without a flag of its own, of a method --regularizer selects."""
        kwargs = self.regularizer_kwargs or {}
        flagged = {name for method in REGISTRY for name in self._flag_parameters(method)}
        clash = sorted(flagged & set(kwargs))
        flags = ", ".join(f"--{name}" for name in clash)
        check(not clash, "regularizer_kwargs", kwargs, f"parameters without a flag of their own (set {flags} instead)")
        accepted = sorted(name for method in names for name in parameter_names(method) if name not in flagged)
        check(
            set(kwargs) <= set(accepted),
            "regularizer_kwargs",
            kwargs,
            f"parameters of regularizer={self.regularizer!r} without a flag of their own: {accepted}",
        )

    def _check_trl_options(self, names: list[str]) -> None:
        """The TRL options a chosen method has no meaning with (docs/regularizers.md, compatibility table), KL-Cov's
        need of off-policy updates included: each method's own `check_pairing`."""
        for name in names:
            REGISTRY[name].check_pairing(self.regularizer, names, self)


@dataclass
class RolloutShapingOptions:
    """DAPO's rollout shaping: dynamic sampling and the soft overlong punishment (docs/recipes.md)."""

    dynamic_sampling: bool = field(
        default=False,
        metadata={
            "help": "DAPO's dynamic sampling (verl's algorithm.filter_groups, arXiv:2503.14476): drop the groups whose "
            "dynamic_sampling_metric is equal for every completion (no GRPO signal) and generate from the next prompts "
            "of the data loader's order until the rollout batch is full again, over every process. Logs "
            "dynamic_sampling/rounds and dynamic_sampling/kept_fraction."
        },
    )
    dynamic_sampling_metric: str = field(
        default="acc",
        metadata={
            "help": "What groups are filtered on (verl's filter_groups.metric; 'acc' in DAPO's and Cui et al.'s "
            "scripts): 'acc' the first reward function (the task's accuracy reward: in entropy-rl train the first of "
            "reward_funcs), 'reward' the weighted sum of all reward functions TRL normalises (overlong punishment "
            "included, as verl's seq_reward), or the name of one reward function (as in rewards/<name>/mean)."
        },
    )
    dynamic_sampling_max_rounds: int = field(
        default=10,
        metadata={
            "help": "Most generation rounds for one rollout batch under dynamic_sampling, the first included; 0: no "
            "cap (verl's filter_groups.max_num_gen_batches; 10 generation batches of 3 x the training batch in the "
            "DAPO and Cui et al. scripts, where a round here is one training batch: 30 is that budget)."
        },
    )
    dynamic_sampling_at_cap: str = field(
        default="error",
        metadata={
            "help": "When dynamic_sampling_max_rounds are spent before the batch is full: 'error' stops the run with "
            "one line, as verl does; 'train' trains the groups kept so far (cut to a size every process and "
            "micro-batch divides; the last round as it is when none was kept) and logs a warning."
        },
    )
    overlong_buffer_len: int = field(
        default=0,
        metadata={
            "help": "DAPO's soft overlong punishment (Eq. 13; verl's reward_model.overlong_buffer.len): responses "
            "longer than max_completion_length - this lose up to overlong_penalty_factor reward linearly, the whole "
            "factor at max_completion_length (TRL's trl.rewards.get_soft_overlong_punishment times the factor, added "
            "to reward_funcs and logged as rewards/soft_overlong_punishment_reward/mean). 0 disables it."
        },
    )
    overlong_penalty_factor: float = field(
        default=1.0,
        metadata={
            "help": "The largest overlong punishment, at max_completion_length (verl's "
            "reward_model.overlong_buffer.penalty_factor; 1.0 in the DAPO scripts)."
        },
    )

    def _check_rollout_shaping(self) -> None:
        """Dynamic sampling and overlong shaping."""
        check(
            self.dynamic_sampling_max_rounds >= 0,
            "dynamic_sampling_max_rounds",
            self.dynamic_sampling_max_rounds,
            "an integer >= 1 (the first generation round counts), or 0 for no cap",
        )
        at_cap = self.dynamic_sampling_at_cap
        check(at_cap in ("error", "train"), "dynamic_sampling_at_cap", at_cap, "'error' or 'train'")
        check(
            bool(self.dynamic_sampling_metric),
            "dynamic_sampling_metric",
            self.dynamic_sampling_metric,
            "'acc', 'reward' or the name of a reward function",
        )
        factor = self.overlong_penalty_factor
        check(factor >= 0, "overlong_penalty_factor", factor, "a finite number >= 0")
        check(
            0 <= self.overlong_buffer_len < self.max_completion_length,
            "overlong_buffer_len",
            self.overlong_buffer_len,
            f"an integer in [0, max_completion_length={self.max_completion_length}) (0 disables it)",
        )


@dataclass
class CurveOptions:
    """The entropy-reward curve: benchmarks evaluated during training, and how they are sampled."""

    curve_benchmarks: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Benchmarks (names in eval/benchmarks/ or spec paths) on which the current policy is evaluated "
            "every "
            "eval_steps (else save_steps) and at the end of training, with the evaluator's grading, avg@k, pass@k "
            "and response entropy, data-parallel over the training processes; one row per benchmark is appended to "
            "OUTPUT_DIR/curve.jsonl next to the training entropy of that step. Empty (--curve_benchmarks '' on the "
            "command line, [] in a recipe): no evaluation during training."
        },
    )
    curve_limit: int | None = field(
        default=None, metadata={"help": "Evaluate only the first N problems of each curve benchmark (default: all)."}
    )
    curve_k: int | None = field(
        default=None, metadata={"help": "Samples per problem for the curve (default: each benchmark's own k)."}
    )
    curve_temperature: float | None = field(
        default=None, metadata={"help": "Sampling temperature for the curve, 0 = greedy (default: the benchmark's)."}
    )
    curve_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Response length limit for the curve (default: the benchmark's)."}
    )
    curve_pass_ks: list[int] = field(
        default_factory=list, metadata={"help": "Extra k values for the curve's pass@k (pass@1 and pass@k always)."}
    )
    curve_batch_size: int = field(
        default=32, metadata={"help": "Sequences per generate() call of the curve evaluation (per process)."}
    )
    curve_seed: int = field(
        default=0,
        metadata={
            "help": "Seed of the curve's samples (each sample has its own seeded generator): with the same seed, "
            "`entropy-rl eval --run` on the checkpoints gives the same rows. The training RNG is not touched."
        },
    )

    @property
    def curve_every(self) -> float | None:
        """Optimizer steps between two evaluations of the curve: eval_steps, else save_steps."""
        return self.eval_steps if self.eval_steps is not None else self.save_steps

    def _check_curve(self) -> None:
        """The curve's settings, and the TRL options it needs when it is on."""
        # `--curve_benchmarks ''` is how a command line says "none" (argparse wants a value after the flag).
        self.curve_benchmarks = [name for name in self.curve_benchmarks if str(name).strip()]
        for name in ("curve_limit", "curve_k", "curve_max_new_tokens"):
            value = getattr(self, name)
            check(value is None or value >= 1, name, value, "an integer >= 1, or unset for the benchmark's own")
        check(self.curve_batch_size >= 1, "curve_batch_size", self.curve_batch_size, "an integer >= 1")
        if self.curve_benchmarks and self.use_vllm:
            # The curve generates with TRL's colocated engine, one per process, as training does.
            check(self.vllm_mode == "colocate", "vllm_mode", self.vllm_mode, "'colocate' with curve_benchmarks")
            tp = self.vllm_tensor_parallel_size
            check(tp == 1, "vllm_tensor_parallel_size", tp, "1 with curve_benchmarks")
            sleep = self.vllm_enable_sleep_mode
            check(not sleep, "vllm_enable_sleep_mode", sleep, "False with curve_benchmarks")
        if self.curve_benchmarks:
            every = self.curve_every
            check(
                every is not None and every >= 1 and float(every).is_integer(),
                "eval_steps",
                self.eval_steps,
                "a whole number of steps >= 1 (or save_steps one) when curve_benchmarks is set",
            )


# Dataclass fields follow the reversed MRO: GRPOConfig's first, then the groups from the last base to the first, the
# order of `entropy-rl train --help` and of saved configs.
@dataclass
class EntropyGRPOConfig(
    CurveOptions, RolloutShapingOptions, RegularizerOptions, RunGuardOptions, DiagnosticsOptions, GRPOConfig
):
    """TRL's GRPOConfig with our option groups; the checks that span them, and TRL's options' ranges."""

    def __post_init__(self) -> None:
        self._parse_regularizer_kwargs()
        # TRL defaults to bf16 even on CPU, where autocast shifts log-probs by up to 0.07 nats: only default it on GPU.
        if not torch.cuda.is_available():
            if self.bf16 is None and not self.fp16:
                self.bf16 = False
            # Without it, accelerate on a CPU-only machine sets up a 2-process launch as two lone processes.
            self.use_cpu = True
        self._apply_native_regularizers()
        self._check_numbers()  # before TRL's own __post_init__, which divides by some of them
        super().__post_init__()
        self._validate()

    @classmethod
    def from_grpo_config(cls, args: GRPOConfig) -> EntropyGRPOConfig:
        """A plain GRPOConfig upgraded: every TRL field kept as it is, ours at their defaults (diagnostics on).

        TRL's `__post_init__` is not run again (it has resolved fields such as steps_per_generation, which it would
        then refuse to see set twice); only our checks run. TRL's own entropy options (entropy_coef,
        top_entropy_quantile) name the run's regularizer, as in an EntropyGRPOConfig.
        """
        upgraded = copy.copy(args)
        upgraded.__class__ = cls
        trl_fields = {f.name for f in dataclasses.fields(GRPOConfig)}
        for spec in dataclasses.fields(cls):
            if spec.name not in trl_fields:
                default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
                setattr(upgraded, spec.name, default)
        upgraded._apply_native_regularizers()
        upgraded._validate()
        return upgraded

    def _validate(self) -> None:
        """Our fields' checks, on top of TRL's (run after GRPOConfig.__post_init__)."""
        names = parse_names(self.regularizer)
        self._check_regularizer(names)
        for name, allowed in TRL_CHOICES.items():  # TRL checks these only when the trainer (and the model) is built
            check(getattr(self, name) in allowed, name, getattr(self, name), f"one of {allowed}")
        self._check_trl_options(names)
        self._check_rollout_shaping()
        self._check_curve()
        self._check_run_guards()
        self._check_diagnostics()

    def _check_numbers(self) -> None:
        """Every float field finite (NaN and inf are never a setting), and TRL's unchecked options in range."""
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name, None)
            if isinstance(value, float) and not math.isfinite(value):
                check(False, spec.name, value, "a finite number")
        for name, value in (self.regularizer_kwargs or {}).items():  # JSON reads NaN and Infinity
            if isinstance(value, float) and not math.isfinite(value):
                check(False, f"regularizer_kwargs[{name!r}]", value, "a finite number")
        for name, (test, allowed) in NUMERIC_RANGES.items():
            value = getattr(self, name)
            try:
                ok = test(value)
            except TypeError:  # None (a command line's "None") where a number is needed: TRL would fail on it later
                ok = False
            check(ok, name, value, allowed)
        if self.save_strategy == "steps":
            check(self.save_steps > 0, "save_steps", self.save_steps, "a number > 0 with save_strategy='steps'")
