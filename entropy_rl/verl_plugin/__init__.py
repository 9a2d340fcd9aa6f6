"""entropy-rl's regularizers as verl policy-loss modes: `...actor.policy_loss.loss_mode=entropy_rl.<spec>`.

Loaded by verl's `verl.plugins` entry point on `import verl` (declared in pyproject.toml), or by
`actor_rollout_ref.model.external_lib=entropy_rl.verl_plugin`. Importing it registers every mode (`MODES`) in verl's
POLICY_LOSS_REGISTRY and hooks verl's ppo_loss, the FSDP engine's model outputs and the actor's mini-batch loop
(`hooks`) so that the losses get H, N and whole-step filters. Only verl 0.9.1 is hooked. See docs/verl.md.

verl swallows a plugin's import error at DEBUG level, so a failure here is logged at WARNING before it propagates.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

try:
    from .hooks import install
    from .losses import MODE_PREFIX, MODES, VERL_VERSION, PolicyLossConfig

    install()
except Exception:
    logger.warning("entropy_rl.verl_plugin failed to load: no entropy_rl.* loss mode is registered", exc_info=True)
    raise

__all__ = ["MODES", "MODE_PREFIX", "VERL_VERSION", "PolicyLossConfig", "install"]
