"""The measured entropy change of the steps that measure it, and the running agreement of both predictions with it
(`dynamics/measured_dH`, `dynamics/pearson_r`, `dynamics/pearson_r_param`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import stats
from .batch_keys import valid_mask


@torch.no_grad()
def entropy_sums(batches: list[dict[str, Any]], one_pass: Callable[..., Any], device: Any) -> torch.Tensor:
    """[sum of token entropies, token count] of `batches` under the current parameters; `one_pass(input_ids,
    attention_mask, logits_to_keep)` is the trainer's one-pass call, so that the measured change compares like with
    like with the step's diagnostics."""
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for inputs in batches:
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        _, token_stats = one_pass(input_ids, attention_mask, inputs["completion_ids"].size(1))
        mask = valid_mask(inputs).double()
        total += torch.stack([(token_stats.entropy.double() * mask).sum(), mask.sum()])
    return total


class DynamicsAgreement:
    """Predicted and measured entropy changes of the run's measured steps (a resumed run's included)."""

    def __init__(self) -> None:
        self.predicted: list[float] = []
        self.measured: list[float] = []
        self.predicted_param: list[float] = []  # the parameter-space predictions of the same steps, when made

    def restore(self, rows: list[dict[str, Any]]) -> None:
        """Start again from the metrics rows a resumed run keeps."""
        measured = [row for row in rows if "dynamics/measured_dH" in row]
        self.predicted = [row["dynamics/predicted_dH"] for row in measured]
        self.measured = [row["dynamics/measured_dH"] for row in measured]
        param = [row.get("dynamics/predicted_dH_param") for row in measured]
        self.predicted_param = [x for x in param if x is not None]

    def record(self, row: dict[str, float], measured: float) -> None:
        """Add the measured entropy change and the running agreement of both predictions with it to `row`."""
        row["dynamics/measured_dH"] = measured
        self.predicted.append(row["dynamics/predicted_dH"])
        self.measured.append(measured)
        r = stats.pearson(self.predicted, self.measured)
        if r is not None:
            row["dynamics/pearson_r"] = r
        if "dynamics/predicted_dH_param" in row:
            self.predicted_param.append(row["dynamics/predicted_dH_param"])
            if len(self.predicted_param) == len(self.measured):
                r = stats.pearson(self.predicted_param, self.measured)
                if r is not None:
                    row["dynamics/pearson_r_param"] = r
