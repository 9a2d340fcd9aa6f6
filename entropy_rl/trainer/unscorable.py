"""Completions no reward function could score: counted on the device for each reward round, read with the step's
other sums at its end, and a run of wholly unscorable rollout batches stopped (`max_nan_reward_batches`)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from trl.trainer.utils import is_async_callable

from ..errors import RewardError

NAN_FRAC_KEY = "reward/nan_frac"  # fraction of the rollout batch's completions no reward function could score

logger = logging.getLogger(__name__)


def noting_nones(func: Any, nones: torch.Tensor) -> Any:
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


class UnscorableCount:
    """The counts of the reward rounds of the current step, and the current streak of wholly unscorable batches."""

    def __init__(self) -> None:
        self._rounds: list[torch.Tensor] = []  # [unscorable, broken, completions] per round
        self._streak: list[int] = []  # steps of the current streak of wholly unscorable rollout batches

    def count(self, rewards_per_func: torch.Tensor, nones: torch.Tensor) -> None:
        """Count completions that no reward function scored (TRL gives them zero advantage), and those among them
        that got a NaN or inf value (a broken reward, not TRL's None convention, marked in `nones`); on the device,
        so that counting them never waits for it."""
        missing = ~torch.isfinite(rewards_per_func)
        unscorable = missing.all(dim=1)
        broken = unscorable & (missing & ~nones).any(dim=1)
        counts = torch.full((3,), float(unscorable.numel()), dtype=torch.float64, device=unscorable.device)
        counts[0], counts[1] = unscorable.sum(), broken.sum()
        self._rounds.append(counts)

    def take(self) -> list[torch.Tensor]:
        """The step's rounds' counts (on the device), once."""
        rounds, self._rounds = self._rounds, []
        return rounds

    def check(self, unscorable: float, broken: float, completions: float, *, step: int, limit: int) -> float:
        """One reward round's unscorable share, read on the host; stop a run of `limit` batches in a row in which
        every completion got a NaN or inf value, which would otherwise train to the end on nothing (0: never)."""
        nan_frac = unscorable / completions if completions else 0.0
        if broken < completions or not completions:
            self._streak = []
            return nan_frac
        self._streak.append(step)
        logger.warning(
            "step %d: the reward functions returned NaN/inf for all %d completions (%d such batches in a row%s)",
            step,
            completions,
            len(self._streak),
            f"; the run stops at {limit}" if limit else "",
        )
        if limit and len(self._streak) >= limit:
            raise RewardError(
                f"reward_funcs returned NaN/inf for every completion in {len(self._streak)} rollout batches in "
                f"a row (steps {self._streak[0]}-{self._streak[-1]}); such batches train on zero "
                "advantages. Check the reward functions and the dataset columns they read "
                f"(max_nan_reward_batches={limit}; 0 never stops; None, TRL's 'not applicable', never counts)"
            )
        return nan_frac
