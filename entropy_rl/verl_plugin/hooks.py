"""The three places verl 0.9.1 is wrapped so that the registered losses get what verl's policy-loss call lacks.

1. `ppo_loss` (verl.workers.utils.losses, rebound where it was imported by name): converts the micro-batch's H and N
   to padded [B, R] and hands them to the loss through `losses.LOSS_INPUTS`; verl's ppo_loss then runs unchanged
   (entropy bonus, KL loss, metrics).
2. `FSDPEngineWithLMHead.prepare_model_outputs`: when the micro-batch carries the `entropy_rl_nec` flag, adds
   N = sum_v p_v^2 (log p_v + H) from the logits, in the same temperature scaling and jagged layout as verl's H.
3. `TrainingWorker.train_mini_batch`: asks for H / N when the loss needs them, and runs the step-level filters
   (Clip_B, Clip_V) once over the rank's whole step batch before any update, with statistics over every DP rank;
   the removed tokens leave `response_mask` and `loss_mask`, hence verl's global token count.
4. `is_trl_available` in verl's monkey_patch module: see `_wrap_is_trl_available`.
Each original is wrapped with functools.wraps, so verl's dispatch attributes survive; `install` is idempotent.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from verl.models.transformers import monkey_patch
from verl.utils import tensordict_utils as tu
from verl.utils.device import get_device_id
from verl.workers.engine.fsdp import transformer_impl
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
from verl.workers.engine_workers import TrainingWorker
from verl.workers.utils import losses as verl_losses
from verl.workers.utils.padding import no_padding_2_padding

from ..errors import ConfigError
from ..regularizers import Regularizer
from ..stats import TOKEN_CHUNK, VOCAB_CHUNK, VocabSums
from ..tokens import TokenBatch
from .losses import (
    HINT_NEC,
    LOSS_INPUTS,
    MODE_PREFIX,
    LossInputs,
    edit_schedule,
    is_plugin_mode,
    missing_input_error,
    register_modes,
    spec_of,
)

NEC_KEY = "entropy_rl_nec"  # micro-batch flag asking for N, and the model_output key that holds it
FILTERED_KEY = "entropy_rl_step_filtered"  # set on the step batch once its step-level filters have run
WRAPPED = "__entropy_rl_wrapped__"  # marks a wrapper, so a second install wraps nothing twice


class DistReducer:
    """entropy-rl's Reducer over a torch.distributed group: statistics of the whole step batch on every rank."""

    def __init__(self, group: Any, device: torch.device | int | str):
        self.group, self.device = group, device

    def _reduce(self, x: torch.Tensor, op: Any) -> torch.Tensor:
        out = x.detach().to(self.device, copy=True)
        dist.all_reduce(out, op=op, group=self.group)
        return out.to(x.device)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return self._reduce(x, dist.ReduceOp.SUM)

    def max(self, x: torch.Tensor) -> torch.Tensor:
        return self._reduce(x, dist.ReduceOp.MAX)

    def cat(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        world, rank = dist.get_world_size(self.group), dist.get_rank(self.group)
        size = torch.tensor([x.numel()], device=self.device)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size, group=self.group)
        sizes = torch.cat(sizes).tolist()
        # float64 holds every float32 and bool exactly, and every backend gathers it
        padded = torch.zeros(max(sizes), dtype=torch.float64, device=self.device)
        padded[: x.numel()] = x.to(self.device, torch.float64)
        chunks = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(chunks, padded, group=self.group)
        full = torch.cat([chunk[:n] for chunk, n in zip(chunks, sizes, strict=True)])
        return full.to(x.device, x.dtype), sum(sizes[:rank])


@torch.no_grad()
def nec_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """N per row of logits [n, V] (already temperature-scaled), in vocabulary tiles folded into `stats.VocabSums`."""
    n, vocab = logits.shape
    sums = VocabSums.empty(n, logits.device)
    for row in range(0, n, TOKEN_CHUNK):
        rows = logits[row : row + TOKEN_CHUNK]
        block = sums.rows(row, row + rows.shape[0])
        targets = torch.zeros(rows.shape[0], dtype=torch.long, device=logits.device)  # log p(target) is unused
        for start in range(0, vocab, VOCAB_CHUNK):
            block.fold(rows[:, start : start + VOCAB_CHUNK].to(torch.float32, copy=True), targets - start)
    return sums.finish()[2]


def _model_nec(engine: FSDPEngineWithLMHead, output: Any, output_args: dict, micro_batch: Any) -> torch.Tensor:
    """N as a jagged tensor laid out like verl's entropy (prepare_model_outputs, both padding-removal branches)."""
    if tu.get_non_tensor_data(micro_batch, "use_fused_kernels", False):
        raise ConfigError(f"invalid config: use_fused_kernels=True gives no logits, hence no N: {HINT_NEC}")
    logits = output.logits
    if isinstance(logits, DTensor):  # tensor parallelism shards the vocabulary
        logits = logits.full_tensor()
    unit = output_args.get("temperature_is_one", False)
    cu_seqlens = micro_batch["input_ids"].offsets()
    if tu.get_non_tensor_data(micro_batch, "use_remove_padding", True):
        temperature = output_args["temperature_rmpad"].unsqueeze(-1)
        logits = transformer_impl._scale_logits_by_temperature(logits.squeeze(0), temperature, is_unit_temperature=unit)
        nec = engine._gather_and_unpad_packed(nec_from_logits(logits), output_args["pad_size"])
    else:
        temperature = output_args["temperature"].unsqueeze(-1).unsqueeze(-1)
        logits = transformer_impl._scale_logits_by_temperature(logits, temperature, is_unit_temperature=unit)
        rows = nec_from_logits(logits.flatten(0, 1)).view(logits.shape[:2])
        nec = torch.cat([row[:length] for row, length in zip(rows, cu_seqlens.diff().tolist(), strict=True)])
    return torch.nested.nested_tensor_from_jagged(nec, cu_seqlens)


def _wrap_prepare_model_outputs(original):
    @functools.wraps(original)
    def prepare_model_outputs(self, output, output_args, micro_batch, logits_processor_func):
        model_output = original(self, output, output_args, micro_batch, logits_processor_func)
        if tu.get_non_tensor_data(micro_batch, NEC_KEY, False):
            model_output[NEC_KEY] = _model_nec(self, output, output_args, micro_batch)
        return model_output

    return prepare_model_outputs


def _wrap_ppo_loss(original):
    @functools.wraps(original)
    def ppo_loss(config, model_output, data, dp_group=None):
        if not is_plugin_mode(config.policy_loss.get("loss_mode", None)):
            return original(config, model_output, data, dp_group)

        def padded(key: str) -> torch.Tensor | None:
            value = model_output.get(key, None)
            return None if value is None else no_padding_2_padding(value, data).detach()

        filtered = bool(tu.get_non_tensor_data(data, FILTERED_KEY, False))
        token = LOSS_INPUTS.set(LossInputs(padded("entropy"), padded(NEC_KEY), filtered))
        try:
            return original(config, model_output, data, dp_group)
        finally:
            LOSS_INPUTS.reset(token)

    return ppo_loss


def _actor_config(worker: TrainingWorker) -> Any:
    """The ActorConfig bound into the worker's loss function (`partial(ppo_loss, config=...)`), if any."""
    return getattr(getattr(worker, "loss_fn", None), "keywords", {}).get("config", None)


def _step_filter(worker: TrainingWorker, data: Any, spec: str, reg: Regularizer) -> dict[str, list[float]]:
    """Run the step-level filters `reg` of `spec` over this rank's step batch; shrink its masks; return the
    metrics pooled over every rank (as lists, the shape of the worker's other metrics)."""
    # One forward-only pass at the current weights, which are the rollout policy's before the first update.
    view = data.copy()
    tu.assign_non_tensor(view, calculate_entropy=True, compute_loss=False, **{NEC_KEY: "nec" in reg.needs})
    output = worker.infer_batch(view)
    if output is None:
        raise NotImplementedError(f"{MODE_PREFIX}{spec}: only the ranks that hold model outputs can filter")
    device = get_device_id()  # where verl runs its own collectives (forward_backward_batch)

    def padded(key: str) -> torch.Tensor | None:
        value = tu.get(output, key)
        return None if value is None else no_padding_2_padding(value, data).to(device)

    mask = data["response_mask"]
    old = data["old_log_probs"].to(device)
    batch = TokenBatch(old, old, data["advantages"].to(device), mask.to(device), padded("entropy"), padded(NEC_KEY))
    for field in sorted(reg.needs):
        if getattr(batch, field) is None:  # an engine without the N hook
            raise missing_input_error(spec, field)
    reducer = DistReducer(worker.engine.get_data_parallel_group(), device)
    edits = reg.edits(batch, reducer)
    shrunk = mask * edits.keep.to(mask.device, mask.dtype)
    data["response_mask"] = shrunk
    data["loss_mask"] = shrunk  # forward_backward_batch counts the global tokens from loss_mask
    tu.assign_non_tensor(data, **{FILTERED_KEY: True})
    pooled = {}
    for name, (num, den) in edits.metrics.items():
        num, den = reducer.sum(torch.stack([num, den])).tolist()
        pooled[f"actor/entropy_rl/{name}"] = [num / max(den, 1.0)]
    return pooled


def _wrap_train_mini_batch(original):
    @functools.wraps(original)
    def train_mini_batch(self, data):
        config = _actor_config(self)
        loss_mode = None if config is None else config.policy_loss.get("loss_mode", None)
        if not is_plugin_mode(loss_mode):
            return original(self, data)
        spec = spec_of(loss_mode)
        schedule = edit_schedule(spec, config.policy_loss)
        in_loss = frozenset() if schedule.per_micro_batch is None else schedule.per_micro_batch.needs
        if "entropies" in in_loss:
            tu.assign_non_tensor(data, calculate_entropy=True)
        if "nec" in in_loss:
            tu.assign_non_tensor(data, **{NEC_KEY: True})
        step = schedule.per_rollout
        filter_metrics = {} if step is None else _step_filter(self, data, spec, step)
        output = original(self, data)
        if output is not None and filter_metrics:
            tu.get(output, "metrics").update(filter_metrics)
        return output

    return train_mini_batch


def _wrap_is_trl_available(original):
    """verl's apply_monkey_patch (every FSDP model) patches TRL's value-head model whenever TRL is importable; the TRL
    that entropy-rl requires (1.16) has no such model, so the patch crashes every FSDP actor. Skip it where TRL lacks
    it."""

    @functools.wraps(original)
    def is_trl_available() -> bool:
        if not original():
            return False
        with contextlib.suppress(ImportError):
            importlib.import_module("trl.experimental.ppo")
            return True
        return hasattr(importlib.import_module("trl"), "AutoModelForCausalLMWithValueHead")

    return is_trl_available


def _wrap(owner: Any, name: str, make_wrapper) -> None:
    original = getattr(owner, name)
    if not getattr(original, WRAPPED, False):
        wrapper = make_wrapper(original)
        setattr(wrapper, WRAPPED, True)
        setattr(owner, name, wrapper)


# Modules that bind verl's ppo_loss by name at import (`from verl.workers.utils.losses import ppo_loss`).
PPO_LOSS_IMPORTERS = ("verl.workers.engine_workers", "verl.trainer.distillation.losses")


def install() -> None:
    """Register the modes and wrap verl's ppo_loss, the FSDP engine's model outputs and the actor's step loop."""
    register_modes()
    _wrap(verl_losses, "ppo_loss", _wrap_ppo_loss)
    for module in PPO_LOSS_IMPORTERS:
        importlib.import_module(module).ppo_loss = verl_losses.ppo_loss
    _wrap(FSDPEngineWithLMHead, "prepare_model_outputs", _wrap_prepare_model_outputs)
    _wrap(TrainingWorker, "train_mini_batch", _wrap_train_mini_batch)
    _wrap(monkey_patch, "is_trl_available", _wrap_is_trl_available)
