"""EntropyGRPOConfig: TRL's GRPOConfig plus the entropy diagnostics and regularizer fields.

Every field's `help` doubles as CLI documentation (`entropy-rl train --help`), as in TRL. The regularizers'
hyperparameters are not declared here: `with_regularizer_fields` copies each registered method's dataclass fields
(name, type, default, help prefixed with the method name), so a new method in entropy_rl/regularizers/ is one file.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig

from .errors import ConfigError, check
from .regularizers import REGISTRY, NativeRegularizer, Regularizer, get_regularizer, parameter_names, parse_names

# Loss types whose per-token loss is the PPO-clipped surrogate the loss-rewriting regularizers are defined on.
CLIP_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
STAT_SCOPES = ("micro_batch", "global")

__all__ = ["ConfigError", "EntropyGRPOConfig", "regularizer_fields", "with_regularizer_fields"]


def regularizer_fields() -> list[tuple[str, type, dataclasses.Field]]:
    """(name, type, field) of every registered method's hyperparameter, `help` prefixed with the method's name."""
    out = []
    for method in REGISTRY.values():
        types = typing.get_type_hints(method)  # real types, not strings: HfArgumentParser builds the flags from them
        for param in dataclasses.fields(method):
            default = {"default": param.default}
            if param.default is dataclasses.MISSING:
                default = {"default_factory": param.default_factory}
            help_text = f"{method.name}: {param.metadata.get('help', '')}".rstrip()
            out.append((param.name, types[param.name], field(**default, metadata={"help": help_text})))
    return out


def with_regularizer_fields(cls: type) -> type:
    """Class decorator, applied before @dataclass: add the flat prefixed regularizer fields to `cls`."""
    annotations = cls.__dict__.get("__annotations__", {})
    taken = set(annotations) | {f.name for f in dataclasses.fields(GRPOConfig)}
    for name, kind, spec in regularizer_fields():
        if name in taken:
            raise TypeError(f"regularizer parameter {name!r} clashes with a config field of the same name")
        taken.add(name)
        annotations[name] = kind
        setattr(cls, name, spec)
    cls.__annotations__ = annotations
    return cls


def _regularizer_help() -> str:
    # Token-level methods first, then the switches of TRL's own options.
    names = sorted(REGISTRY, key=lambda name: issubclass(REGISTRY[name], NativeRegularizer))
    return "Entropy regularizer(s), '+'-joined: " + ", ".join(["none", *names])


@dataclass
@with_regularizer_fields
class EntropyGRPOConfig(GRPOConfig):
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
    metrics_file: str = field(
        default="metrics.jsonl",
        metadata={"help": "File name, inside output_dir, of the per-step metrics (one JSON row per optimizer step)."},
    )

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

    def build_regularizer(self) -> Regularizer:
        names = parse_names(self.regularizer)
        params = {name: getattr(self, name) for method in names for name in parameter_names(method)}
        return get_regularizer(self.regularizer, **params)

    def _apply_native_regularizers(self, names: list[str]) -> None:
        """Switch TRL's own option on for a native regularizer; refuse TRL options set without their flag."""
        native = [method for method in REGISTRY.values() if issubclass(method, NativeRegularizer)]
        for method in native:
            name, option, is_set = method.name, method.trl_option, method.option_is_set(self)
            if name in names and not is_set:
                for key, value in method.trl_defaults.items():
                    setattr(self, key, value)
            elif name not in names and is_set and method.exclusive:
                raise ConfigError(
                    f"invalid config: {option}={getattr(self, option)!r} switches on TRL's {name} outside "
                    f"--regularizer={self.regularizer!r}; allowed: add {name} to --regularizer (runs are labelled "
                    "by it) or leave the option at its default"
                )

    def __post_init__(self) -> None:
        # TRL defaults to bf16 even on CPU, where autocast shifts log-probs by up to 0.07 nats: only default it on GPU.
        if not torch.cuda.is_available():
            if self.bf16 is None and not self.fp16:
                self.bf16 = False
            # Without it, accelerate on a CPU-only machine sets up a 2-process launch as two lone processes.
            self.use_cpu = True
        self._apply_native_regularizers(parse_names(self.regularizer))
        super().__post_init__()
        self._validate()

    @classmethod
    def from_grpo_config(cls, args: GRPOConfig) -> EntropyGRPOConfig:
        """A plain GRPOConfig upgraded: every TRL field kept as it is, ours at their defaults (diagnostics on).

        TRL's `__post_init__` is not run again (it has resolved fields such as steps_per_generation, which it would
        then refuse to see set twice); only our checks run. TRL's own entropy options (entropy_coef,
        top_entropy_quantile) name the run's regularizer, as `--regularizer` would have switched them on.
        """
        upgraded = copy.copy(args)
        upgraded.__class__ = cls
        trl_fields = {f.name for f in dataclasses.fields(GRPOConfig)}
        for spec in dataclasses.fields(cls):
            if spec.name not in trl_fields:
                default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
                setattr(upgraded, spec.name, default)
        native = [m for m in REGISTRY.values() if issubclass(m, NativeRegularizer) and m.exclusive]
        names = [m.name for m in native if m.option_is_set(upgraded)]
        upgraded.regularizer = "+".join(names) if names else "none"
        upgraded._validate()
        return upgraded

    def _validate(self) -> None:
        """Our fields' checks, on top of TRL's (run after GRPOConfig.__post_init__)."""
        names = parse_names(self.regularizer)
        self.build_regularizer()  # validates every parameter of the chosen methods
        check(self.stat_scope in STAT_SCOPES, "stat_scope", self.stat_scope, f"one of {STAT_SCOPES}")
        if any(REGISTRY[name].kind in ("loss", "filter") for name in names):
            check(
                self.loss_type in CLIP_LOSS_TYPES,
                "loss_type",
                self.loss_type,
                f"one of {CLIP_LOSS_TYPES} with "
                f"regularizer={self.regularizer!r} (token-level methods on the PPO-clip surrogate)",
            )
            check(
                self.importance_sampling_level == "token",
                "importance_sampling_level",
                self.importance_sampling_level,
                f"'token' with regularizer={self.regularizer!r}",
            )
        self._check_off_policy(names)
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

    def _check_off_policy(self, names: list[str]) -> None:
        """Refuse a method that does nothing on-policy (KL-Cov) when every update is on-policy."""
        off_policy = self.num_iterations > 1 or self.steps_per_generation > self.gradient_accumulation_steps
        for name in names:
            reason = REGISTRY[name].off_policy_only
            if reason is None:
                continue
            check(
                off_policy,
                "regularizer",
                self.regularizer,
                f"{name} only with off-policy updates: {reason}. Set "
                f"num_iterations > 1 (now {self.num_iterations}) or steps_per_generation > "
                f"gradient_accumulation_steps (now {self.steps_per_generation} <= {self.gradient_accumulation_steps})",
            )
