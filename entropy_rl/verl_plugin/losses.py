"""The registered policy losses `entropy_rl.<spec>` and their parameters (a PolicyLossConfig built from the registry).

Each loss takes verl's policy-loss arguments, builds entropy-rl's TokenBatch, applies the regularizer's edits to the
PPO token loss and aggregates with verl's own `agg_loss` and `config.global_batch_info`, so every loss_agg_mode,
the data-parallel size and the global token / sequence counts are verl's. H and N come from `hooks` through
`LOSS_INPUTS`; step-level filters (Clip_B, Clip_V) have already shrunk the response mask when `filtered` is set.
"""

from __future__ import annotations

import contextvars
import dataclasses
import itertools
from typing import Any, NamedTuple

import torch
import verl
from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, agg_loss, register_policy_loss
from verl.workers.config import PolicyLossConfig as VerlPolicyLossConfig

from ..errors import ConfigError, check
from ..regularizers import LOCAL, REGISTRY, Composite, Edits, EditSchedule, Kind, Reducer, Regularizer, parse_names
from ..regularizers.base import apply_edits, by_advantage_sign
from ..regularizers.native import HighEntropyTokens
from ..tokens import TokenBatch, ppo_token_loss

# The release whose private API `hooks` wraps; tests/test_verl_plugin.py::test_contract guards each hooked name.
VERL_VERSION = "0.9.1"
if verl.__version__ != VERL_VERSION:
    raise ImportError(
        f"entropy_rl.verl_plugin hooks verl {VERL_VERSION}'s internals; found verl {verl.__version__}: "
        f"pip install verl=={VERL_VERSION}"
    )

MODE_PREFIX = "entropy_rl."
# entropy-rl parameters whose meaning verl already has under another key: the verl key (and its default) wins.
VERL_KEYS = {"kl_cov_coef": "ppo_kl_coef"}
# TRL-native methods verl also has natively: the plugin registers no mode for them, docs/verl.md gives the key.
VERL_NATIVE = {
    "entropy_bonus": "actor_rollout_ref.actor.entropy_coeff",
    "clip_higher": "actor_rollout_ref.actor.clip_ratio_high",
}
HINT_ENTROPY = "set actor_rollout_ref.actor.calculate_entropy=True"
HINT_NEC = (
    "the plugin computes N from the logits in verl's FSDP engine only: use actor_rollout_ref.actor.strategy=fsdp2 "
    "(or fsdp) and actor_rollout_ref.model.use_fused_kernels=False (fused kernels never materialise the logits)"
)


@dataclasses.dataclass
class HighEntropyWeight(Regularizer):
    """ "Beyond the 80/20 rule" as TRL's `top_entropy_quantile` does it: only tokens whose entropy is in the top
    quantile of the batch keep their policy loss; the others get weight 0 and stay in the denominator.
    """

    name = "high_entropy_tokens"
    kind = Kind.LOSS  # TRL's own option in the trainer; here an edit of the token loss like any other
    needs = frozenset({"entropies"})
    top_entropy_quantile: float = HighEntropyTokens.trl_defaults["top_entropy_quantile"]

    def __post_init__(self) -> None:
        q = self.top_entropy_quantile
        check(0 < q <= 1, "top_entropy_quantile", q, "a fraction in (0, 1] (0.2 = the top 20 % of tokens)")

    @torch.no_grad()
    def edits(self, batch: TokenBatch, reduce: Reducer = LOCAL, generator: torch.Generator | None = None) -> Edits:
        mask = batch.mask
        values, _ = reduce.cat(batch.entropies[mask].float())
        if values.numel() == 0:
            keep = torch.zeros_like(mask)
        else:
            threshold = torch.quantile(values, 1 - self.top_entropy_quantile)
            keep = (batch.entropies * mask >= threshold) & mask
        metrics = by_advantage_sign(keep, mask, batch.advantages, "high_entropy_tokens/kept_frac")
        return Edits(weight=keep.to(batch.logps.dtype), metrics=metrics)


# The methods by name as the plugin builds them: the registry's, with high_entropy_tokens as an edit.
METHODS: dict[str, type[Regularizer]] = {**REGISTRY, HighEntropyWeight.name: HighEntropyWeight}


def _generate_modes() -> tuple[str, ...]:
    """Every spec verl cannot express natively: a filter, a loss rewrite and high-entropy tokens, each optional."""
    filters = [None] + sorted(name for name, cls in REGISTRY.items() if cls.kind == Kind.FILTER)
    losses = [None] + sorted(name for name, cls in REGISTRY.items() if cls.kind == Kind.LOSS)
    specs = []
    for parts in itertools.product(filters, losses, [None, HighEntropyWeight.name]):
        names = [name for name in parts if name]
        if names:
            spec = "+".join(names)
            parse_names(spec)  # the combination rules of the TRL trainer hold here too
            specs.append(spec)
    return tuple(specs)


MODES = _generate_modes()


def _config_fields() -> list[tuple[str, type, dataclasses.Field]]:
    """The regularizers' parameters verl's PolicyLossConfig lacks, with entropy-rl's defaults and help texts."""
    verl_fields = {f.name for f in dataclasses.fields(VerlPolicyLossConfig)}
    names = sorted({name for spec in MODES for name in parse_names(spec)})
    out = []
    for f in (f for name in names for f in dataclasses.fields(METHODS[name])):
        if VERL_KEYS.get(f.name, f.name) not in verl_fields:
            out.append((f.name, type(f.default), dataclasses.field(default=f.default, metadata=f.metadata)))
    return out


# `actor_rollout_ref.actor.policy_loss._target_=entropy_rl.verl_plugin.PolicyLossConfig` lets hydra accept the
# `+actor_rollout_ref.actor.policy_loss.<param>=...` keys of every regularizer.
PolicyLossConfig = dataclasses.make_dataclass("PolicyLossConfig", _config_fields(), bases=(VerlPolicyLossConfig,))
PolicyLossConfig.__module__ = __name__  # where pickle (Ray) finds it
PolicyLossConfig.__doc__ = "verl's PolicyLossConfig plus every entropy-rl regularizer parameter (docs/verl.md)."


def edit_schedule(spec: str, policy_loss: Any) -> EditSchedule:
    """The methods of `spec` with their parameters read from verl's policy_loss config (absent keys: defaults):
    filters per step batch (`per_rollout`), the others in the loss (`per_micro_batch`)."""
    params = {}
    for name in parse_names(spec):
        for f in dataclasses.fields(METHODS[name]):
            value = policy_loss.get(VERL_KEYS.get(f.name, f.name), None)
            if value is not None:
                params[f.name] = value
    return EditSchedule(spec, params, methods=METHODS)


class LossInputs(NamedTuple):
    """What verl's policy-loss call lacks, set by the ppo_loss wrapper: padded [B, R] H and N (detached, or None)
    and whether the step-level filters already shrank the response mask."""

    entropies: torch.Tensor | None
    nec: torch.Tensor | None
    filtered: bool


LOSS_INPUTS: contextvars.ContextVar[LossInputs | None] = contextvars.ContextVar("entropy_rl_loss_inputs", default=None)


def missing_input_error(spec: str, field: str) -> ConfigError:
    """For a mode whose regularizer needs H or N that verl did not compute: names the config that fixes it."""
    what = {"entropies": "the per-token entropy H", "nec": "N = sum_v p_v^2 (log p_v + H)"}[field]
    hint = HINT_ENTROPY if field == "entropies" else HINT_NEC
    return ConfigError(f"invalid config: loss_mode={MODE_PREFIX}{spec} needs {what} of the training forward: {hint}")


def make_policy_loss(spec: str):
    """verl's policy-loss signature around the regularizer of `spec`."""
    has_step_filter = EditSchedule(spec, methods=METHODS).per_rollout is not None

    def policy_loss(
        old_log_prob: torch.Tensor,
        log_prob: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        loss_agg_mode: str = "token-mean",
        config: Any = None,
        rollout_is_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        # Called directly, not through ppo_loss, the loss has no H or N: a mode that needs them is refused below.
        inputs = LOSS_INPUTS.get() or LossInputs(None, None, False)
        if has_step_filter and LOSS_INPUTS.get() is not None and not inputs.filtered:
            raise ConfigError(
                f"invalid config: loss_mode={MODE_PREFIX}{spec} filters the whole step batch in verl's "
                "TrainingWorker.train_mini_batch, which this ppo_loss call did not come through (only the "
                "FSDP engine workers' actor update is hooked)"
            )
        schedule = edit_schedule(spec, config.policy_loss)
        # Filtered: the step hook applied the filters; no method left is plain PPO (Composite([]) edits nothing).
        reg = (schedule.per_micro_batch or Composite([])) if inputs.filtered else schedule.regularizer
        low = config.clip_ratio_low if config.clip_ratio_low is not None else config.clip_ratio
        high = config.clip_ratio_high if config.clip_ratio_high is not None else config.clip_ratio
        batch = TokenBatch(log_prob, old_log_prob, advantages, response_mask, inputs.entropies, inputs.nec, low, high)
        for field in sorted(reg.needs):
            if getattr(batch, field) is None:
                raise missing_input_error(spec, field)
        edits = reg.edits(batch, LOCAL)  # generator None: the global RNG, as verl's clip_cov draws
        per_token = apply_edits(ppo_token_loss(batch, clip=reg.uses_ppo_clip), batch, edits)
        if rollout_is_weights is not None:
            per_token = per_token * rollout_is_weights
        keep = batch.mask if edits.keep is None else batch.mask & edits.keep
        loss = agg_loss(loss_mat=per_token, loss_mask=keep, loss_agg_mode=loss_agg_mode, **config.global_batch_info)
        valid = batch.mask.to(log_prob.dtype)
        count = valid.sum().clamp(min=1)
        metrics = {
            "actor/ppo_kl": ((old_log_prob - log_prob.detach()) * valid).sum().item() / count.item(),
            "actor/pg_clipfrac": (batch.ppo_clipped() & batch.mask).sum().item() / count.item(),
        }
        for name, (num, den) in edits.metrics.items():
            metrics[f"actor/entropy_rl/{name}"] = (num / den.clamp(min=1)).item()
        return loss, metrics

    policy_loss.__name__ = policy_loss.__qualname__ = f"entropy_rl_{spec.replace('+', '_')}"
    return policy_loss


def register_modes() -> None:
    for spec in MODES:
        if MODE_PREFIX + spec not in POLICY_LOSS_REGISTRY:
            register_policy_loss(MODE_PREFIX + spec)(make_policy_loss(spec))


def is_plugin_mode(loss_mode: str | None) -> bool:
    return bool(loss_mode) and loss_mode.startswith(MODE_PREFIX)


def spec_of(loss_mode: str) -> str:
    return loss_mode[len(MODE_PREFIX) :]
