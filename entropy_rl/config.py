"""EntropyGRPOConfig: TRL's GRPOConfig plus the entropy diagnostics and regularizer fields.

Every field's `help` doubles as CLI documentation (`entropy-rl train --help`), as in TRL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from trl import GRPOConfig

from .errors import ConfigError, check
from .regularizers import REGISTRY, Regularizer, get_regularizer, parameter_names, parse_names
from .regularizers.clip_b import ClipB
from .regularizers.clip_cov import ClipCov
from .regularizers.clip_v import ClipV
from .regularizers.kl_cov import KLCov
from .regularizers.steer import Steer

# Loss types whose per-token loss is the PPO-clipped surrogate the loss-rewriting regularizers are defined on.
CLIP_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
STAT_SCOPES = ("micro_batch", "global")

__all__ = ["ConfigError", "EntropyGRPOConfig"]


@dataclass
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
        metadata={
            "help": "Entropy regularizer(s), '+'-joined: none, clip_cov, kl_cov, steer, clip_b, clip_v, entropy_bonus, "
            "clip_higher, high_entropy_tokens (e.g. 'clip_b+steer'). See docs/regularizers.md."
        },
    )
    stat_scope: str = field(
        default="micro_batch",
        metadata={
            "help": "Tokens the statistics of clip_cov / kl_cov / steer span: 'micro_batch' (each loss micro-batch on "
            "each rank, as the authors' verl code) or 'global' (the whole step batch on all ranks, from the rollout "
            "policy, once per generation; one extra no-grad forward). clip_b / clip_v are always global."
        },
    )
    clip_cov_ratio: float = field(
        default=ClipCov.clip_cov_ratio,
        metadata={"help": "clip_cov: fraction of valid tokens whose gradient is stopped (Cui et al.: 2e-4)."},
    )
    clip_cov_lb: float = field(
        default=ClipCov.clip_cov_lb,
        metadata={"help": "clip_cov: lower bound (exclusive) of the token covariance band."},
    )
    clip_cov_ub: float = field(
        default=ClipCov.clip_cov_ub,
        metadata={"help": "clip_cov: upper bound (exclusive) of the token covariance band."},
    )
    kl_cov_ratio: float = field(
        default=KLCov.kl_cov_ratio,
        metadata={"help": "kl_cov: fraction (not percent) of valid tokens, top by covariance, that get the penalty."},
    )
    kl_cov_coef: float = field(
        default=KLCov.kl_cov_coef,
        metadata={"help": "kl_cov: weight of the |log p - log p_old| penalty (verl's ppo_kl_coef)."},
    )
    steer_lambda_min: float = field(
        default=Steer.steer_lambda_min, metadata={"help": "steer: smallest token weight (paper v4: 0.7; code: 0.8)."}
    )
    steer_lambda_max: float = field(
        default=Steer.steer_lambda_max, metadata={"help": "steer: largest token weight (linear map; 1.0 for exp)."}
    )
    steer_mapping: str = field(
        default=Steer.steer_mapping, metadata={"help": "steer: 'linear' into [min, max] or 'exp' floored at min."}
    )
    steer_estimator: str = field(
        default=Steer.steer_estimator,
        metadata={
            "help": "steer: 'code' (authors' (A/p_old) p(1-p)(log p + H)) or 'exact' (A ratio 1[unclipped] (S - N))."
        },
    )
    clip_b_mu: float = field(
        default=ClipB.clip_b_mu, metadata={"help": "clip_b: z-score below which negative-advantage tokens are removed."}
    )
    clip_v_mu: float = field(
        default=ClipV.clip_v_mu, metadata={"help": "clip_v: tokens with A <= 0 and N - S above mu * std are removed."}
    )
    clip_v_max_frac: float = field(
        default=ClipV.clip_v_max_frac, metadata={"help": "clip_v: cap on the share of valid tokens removed per step."}
    )

    def build_regularizer(self) -> Regularizer:
        names = parse_names(self.regularizer)
        params = {name: getattr(self, name) for method in names for name in parameter_names(method)}
        return get_regularizer(self.regularizer, **params)

    def _apply_native_regularizers(self, names: list[str]) -> None:
        """Switch TRL's own option on for a native regularizer; refuse TRL options set without their flag."""
        native = {
            "entropy_bonus": ("entropy_coef", self.entropy_coef != 0 or self.use_adaptive_entropy),
            "high_entropy_tokens": ("top_entropy_quantile", self.top_entropy_quantile < 1.0),
            "clip_higher": ("epsilon_high", self.epsilon_high is not None),
        }
        for name, (option, is_set) in native.items():
            if name in names and not is_set:
                for key, value in REGISTRY[name].trl_defaults.items():
                    setattr(self, key, value)
            elif name not in names and is_set and name != "clip_higher":
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
        names = parse_names(self.regularizer)
        self._apply_native_regularizers(names)
        super().__post_init__()
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
        if "kl_cov" in names:
            off_policy = self.num_iterations > 1 or self.steps_per_generation > self.gradient_accumulation_steps
            check(
                off_policy,
                "regularizer",
                self.regularizer,
                "kl_cov only with off-policy updates: its penalty |log p - log p_old| is 0 on-policy. Set "
                f"num_iterations > 1 (now {self.num_iterations}) or steps_per_generation > "
                f"gradient_accumulation_steps (now {self.steps_per_generation} <= {self.gradient_accumulation_steps})",
            )
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
