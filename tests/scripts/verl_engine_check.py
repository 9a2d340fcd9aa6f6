"""Real verl 0.9.1 FSDP training steps on CPU with the entropy_rl plugin, checked against entropy-rl on an HF forward.

    python tests/scripts/verl_engine_check.py OUT.json MODEL_DIR  # every mode, padding removal off and on
    torchrun --nproc_per_node 2 tests/scripts/verl_engine_check.py OUT.json MODEL_DIR --filters  # step filters, 2 ranks

Run by tests/test_verl_plugin.py. verl has no CPU platform and registers its FSDP engine for cuda/npu only, so this
test sets a CPU platform (gloo, no device memory) and asks for the cuda engine; attention is sdpa, weights fp32, and
the learning rate 0, so every mode's step sees the same weights as the reference forward.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sys
from functools import partial
from pathlib import Path

os.environ["VERL_USE_EXTERNAL_PLUGINS"] = "none"  # the plugin must load after the CPU platform is set
os.environ["VERL_ENGINE_DEVICE"] = "cuda"
if "MASTER_PORT" not in os.environ:  # one process, not under torchrun: a free port for its process group
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free.getsockname()[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import verl  # noqa: E402, F401
from verl.plugin.platform import platform_manager  # noqa: E402
from verl.plugin.platform.platform_base import PlatformBase  # noqa: E402

# torch.cpu is the device module; verl also asks it for memory figures and RNG state (it skips memory logging for
# torch.cpu, but not the per-step memory metrics).
for name, fn in {
    "empty_cache": lambda *args, **kwargs: None,
    "max_memory_allocated": lambda *args, **kwargs: 0,
    "max_memory_reserved": lambda *args, **kwargs: 0,
    "get_rng_state": torch.get_rng_state,
    "set_rng_state": torch.set_rng_state,
}.items():
    if not hasattr(torch.cpu, name):
        setattr(torch.cpu, name, fn)


class CPUPlatform(PlatformBase):
    device_name = "cpu"
    vendor_name = "cpu"
    device_module = torch.cpu

    def is_available(self):
        return True

    def current_device(self):
        return "cpu"  # verl moves modules and tensors `.to(get_device_id())`

    def device_count(self):
        return 1

    def set_device(self, device_index):
        pass

    def synchronize(self, device_index=None):
        pass

    def manual_seed(self, seed):
        torch.manual_seed(seed)

    def manual_seed_all(self, seed):
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings):
        pass

    def empty_cache(self):
        pass

    def get_device_capability(self, device_index=0):
        return None, None

    def communication_backend_name(self):
        return "gloo"

    def visible_devices_envvar(self):
        return "CUDA_VISIBLE_DEVICES"

    @contextlib.contextmanager
    def nvtx_range(self, msg):
        yield

    def profiler_start(self):
        pass

    def profiler_stop(self):
        pass

    def ray_resource_name(self):
        return "CPU"

    def ray_noset_envvars(self):
        return []

    def is_ipc_supported(self):
        return False

    def cudart(self):
        return None


platform_manager.set_platform(CPUPlatform())
dist.init_process_group("gloo")

# The plugin, loaded as `actor_rollout_ref.model.external_lib=entropy_rl.verl_plugin` loads it.
from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY  # noqa: E402
from verl.utils.import_utils import import_external_libs  # noqa: E402
from verl.workers import engine_workers  # noqa: E402  (binds verl's ppo_loss before the plugin loads)

REGISTERED_BEFORE = sorted(name for name in POLICY_LOSS_REGISTRY if name.startswith("entropy_rl."))
import_external_libs("entropy_rl.verl_plugin")

from hydra import compose, initialize_config_dir  # noqa: E402
from verl.trainer.config import CheckpointConfig  # noqa: E402
from verl.utils import tensordict_utils as tu  # noqa: E402
from verl.utils.config import omega_conf_to_dataclass  # noqa: E402
from verl.workers.config import FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig, TrainingWorkerConfig  # noqa: E402
from verl.workers.engine_workers import TrainingWorker  # noqa: E402
from verl.workers.utils import losses as verl_losses  # noqa: E402
from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding  # noqa: E402

from entropy_rl.regularizers import Kind, get_regularizer  # noqa: E402
from entropy_rl.tokens import TokenBatch  # noqa: E402
from entropy_rl.toy import build_model, build_tokenizer  # noqa: E402
from entropy_rl.verl_plugin import PolicyLossConfig, hooks  # noqa: E402

ROWS, PROMPT, RESPONSE, TEMPERATURE = 8, 5, 7, 0.7
RANK, WORLD = dist.get_rank(), dist.get_world_size()


def make_worker(model_dir: str, remove_padding: bool, micro_batch: int = ROWS) -> TrainingWorker:
    model = HFModelConfig(
        path=model_dir, use_remove_padding=remove_padding, override_config={"attn_implementation": "sdpa"}
    )
    engine = FSDPEngineConfig(
        strategy="fsdp2", model_dtype="fp32", mixed_precision={"param_dtype": "fp32", "reduce_dtype": "fp32",
        "buffer_dtype": "fp32"}, use_torch_compile=False, use_dynamic_bsz=False, micro_batch_size_per_gpu=micro_batch,
        infer_micro_batch_size_per_gpu=micro_batch, forward_only=False,
    )  # fmt: skip
    config = TrainingWorkerConfig(
        model_type="language_model",
        model_config=model,
        engine_config=engine,
        optimizer_config=FSDPOptimizerConfig(lr=0.0, weight_decay=0.0, total_training_steps=10),
        checkpoint_config=CheckpointConfig(),
    )
    worker = TrainingWorker(config)
    worker.reset()
    return worker


def actor_config(policy_loss) -> object:
    config_dir = str(Path(verl.__file__).parent / "trainer" / "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(
            config_name="ppo_trainer",
            overrides=["actor_rollout_ref.actor.ppo_mini_batch_size=8", "actor_rollout_ref.actor.strategy=fsdp2",
                       "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8"],
        )  # fmt: skip
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    return dataclasses.replace(actor, policy_loss=policy_loss)


def make_batch(seed: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts and right-padded responses, as the rollout hands them to the actor (all ranks' rows)."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(5, 70, (ROWS, PROMPT), generator=g)
    responses = torch.randint(5, 70, (ROWS, RESPONSE), generator=g)
    prompt_lens = torch.randint(2, PROMPT + 1, (ROWS,), generator=g)
    response_lens = torch.randint(1, RESPONSE + 1, (ROWS,), generator=g)
    prompt_mask = torch.arange(PROMPT)[None, :] >= PROMPT - prompt_lens[:, None]
    response_mask = (torch.arange(RESPONSE)[None, :] < response_lens[:, None]).long()
    attention_mask = torch.cat([prompt_mask.long(), response_mask], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return {
        "prompts": prompts,
        "responses": responses,
        "input_ids": torch.cat([prompts, responses], dim=1),
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "response_mask": response_mask,
        "advantages": torch.randn(ROWS, 1, generator=g).expand(ROWS, RESPONSE).clone(),
        "noise": 0.2 * torch.randn(ROWS, RESPONSE, generator=g),
    }


@torch.no_grad()
def reference_stats(model_dir: str, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p, H and N of the response tokens from a plain HF forward (padded, float64 statistics)."""
    model = build_model(build_tokenizer(), hidden_size=32, num_layers=2)
    model.load_state_dict(torch.load(Path(model_dir) / "weights.pt"))
    model.config._attn_implementation = "sdpa"
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits  # fmt: skip
    logits = (logits[:, PROMPT - 1 : -1] / TEMPERATURE).double()
    logp_all = logits.log_softmax(-1)
    p = logp_all.exp()
    entropy = -(p * logp_all).sum(-1)
    nec = (p * p * (logp_all + entropy[..., None])).sum(-1)
    logp = logp_all.gather(-1, batch["responses"][..., None]).squeeze(-1)
    return logp.float(), entropy.float(), nec.float()


def to_verl(batch: dict, rows: slice, old_log_probs: torch.Tensor) -> object:
    data = tu.get_tensordict({k: v[rows].clone() for k, v in batch.items() if k != "noise"})
    data["old_log_probs"] = old_log_probs[rows].clone()
    data = left_right_2_no_padding(data)
    tu.assign_non_tensor(
        data, calculate_entropy=False, global_batch_size=ROWS, mini_batch_size=ROWS, epochs=1, seed=1,
        dataloader_kwargs={"shuffle": False}, compute_loss=True, temperature=TEMPERATURE,
    )  # fmt: skip
    return data


def train(worker: TrainingWorker, data, policy_loss, seed: int) -> tuple[float, dict]:
    """One update of the step batch `data` (one mini-batch); its loss and the worker's metrics."""
    worker.set_loss_fn(partial(verl_losses.ppo_loss, config=actor_config(policy_loss)))
    torch.manual_seed(seed)  # Clip-Cov draws from the global RNG, in the engine and in the reference alike
    metrics = tu.get(worker.train_mini_batch(data), "metrics")
    return metrics["loss"][0], metrics


def engine_nec(worker: TrainingWorker, batch: dict, old: torch.Tensor) -> torch.Tensor:
    data = to_verl(batch, slice(None), old)
    tu.assign_non_tensor(data, calculate_entropy=True, compute_loss=False, **{hooks.NEC_KEY: True})
    output = worker.infer_batch(data)
    return no_padding_2_padding(tu.get(output, hooks.NEC_KEY), data)


MODES = {  # name: (loss_mode, PolicyLossConfig fields)
    "clip_cov": ("clip_cov", dict(clip_cov_ratio=0.2, clip_cov_lb=-1.0, clip_cov_ub=5.0)),
    "kl_cov": ("kl_cov", dict(kl_cov_ratio=0.1, ppo_kl_coef=1.0)),
    "steer": ("steer", {}),
    "steer_exact": ("steer", dict(steer_estimator="exact")),
    "clip_b": ("clip_b", dict(clip_b_mu=1.0)),
    "clip_v": ("clip_v", dict(clip_v_mu=0.5, clip_v_max_frac=0.1)),
    "clip_b+steer": ("clip_b+steer", dict(clip_b_mu=1.0)),
    "clip_v+kl_cov": ("clip_v+kl_cov", dict(clip_v_mu=0.5, clip_v_max_frac=0.1, kl_cov_ratio=0.1, ppo_kl_coef=1.0)),
    "high_entropy_tokens": ("high_entropy_tokens", dict(top_entropy_quantile=0.5)),
}


def entropy_rl_params(fields: dict) -> dict:
    renamed = {"ppo_kl_coef": "kl_cov_coef", "top_entropy_quantile": None}
    return {renamed.get(k, k): v for k, v in fields.items() if renamed.get(k, k)}


def reference_loss(spec: str, fields: dict, stats, batch, old, seed: int) -> tuple[float, torch.Tensor]:
    """entropy-rl's own loss on the reference forward: one micro-batch = the step batch, so every scope agrees."""
    logp, entropy, nec = stats
    mask = batch["response_mask"].bool()
    params = entropy_rl_params(fields)
    if "high_entropy_tokens" in spec:  # the TRL-native method: the plugin's part, on the reference H
        from entropy_rl.regularizers.base import apply_edits
        from entropy_rl.tokens import ppo_token_loss
        from entropy_rl.verl_plugin.losses import HighEntropyWeight

        tb = TokenBatch(logp, old, batch["advantages"], mask, entropy, nec, 0.2, 0.2)
        weight = HighEntropyWeight(fields["top_entropy_quantile"]).edits(tb)
        per_token = apply_edits(ppo_token_loss(tb), tb, weight)
        return float((per_token * mask).sum() / mask.sum()), mask
    reg = get_regularizer(spec, **params)
    torch.manual_seed(seed)
    loss, _ = reg.policy_loss(logps=logp, old_logps=old, advantages=batch["advantages"], mask=mask,
                              entropies=entropy, nec=nec)  # fmt: skip
    filters = [part for part in getattr(reg, "parts", [reg]) if part.kind == Kind.FILTER]
    keep = mask
    if filters:
        keep = mask & filters[0].edits(TokenBatch(old, old, batch["advantages"], mask, entropy, nec)).keep
    return float(loss), keep


def check_modes(model_dir: str) -> dict:
    batch = make_batch(0)
    stats = reference_stats(model_dir, batch)
    old = stats[0] + batch["noise"] * batch["response_mask"]
    results = {}
    for remove_padding in (False, True):
        worker = make_worker(model_dir, remove_padding)
        n_engine = engine_nec(worker, batch, old)
        mask = batch["response_mask"].bool()
        results[f"nec_layout/rmpad={remove_padding}"] = float((n_engine - stats[2]).abs()[mask].max())
        for name, (mode, fields) in MODES.items():
            data = to_verl(batch, slice(None), old)
            engine_loss, _ = train(worker, data, PolicyLossConfig(loss_mode=f"entropy_rl.{mode}", **fields), seed=3)
            expected, keep = reference_loss(mode, fields, stats, batch, old, seed=3)
            same_mask = bool(torch.equal(data["response_mask"].bool(), keep))
            results[f"{name}/rmpad={remove_padding}"] = {"engine": engine_loss, "entropy_rl": expected,
                                                          "same_mask": same_mask}  # fmt: skip
    return results


def check_filters(model_dir: str) -> dict:
    """Step filters on this rank's share of the step batch, in micro-batches of 2 rows: masks and loss, for comparison
    across process counts."""
    batch = make_batch(1)
    stats = reference_stats(model_dir, batch)
    old = stats[0] + batch["noise"] * batch["response_mask"]
    worker = make_worker(model_dir, remove_padding=True, micro_batch=2)
    share = ROWS // WORLD
    rows = slice(RANK * share, (RANK + 1) * share)
    results = {}
    for name in ("clip_b", "clip_v", "clip_b+steer"):
        mode, fields = MODES[name]
        data = to_verl(batch, rows, old)
        before = int(batch["response_mask"].sum())
        loss, metrics = train(worker, data, PolicyLossConfig(loss_mode=f"entropy_rl.{mode}", **fields), seed=3)
        masks = [None] * WORLD
        dist.all_gather_object(masks, data["response_mask"].tolist())
        mask = [row for part in masks for row in part]
        (removed_frac,) = metrics[f"actor/entropy_rl/{mode.split('+')[0]}/removed_frac"]
        results[name] = {"loss": loss, "mask": mask, "removed": before - sum(map(sum, mask)), "before": before,
                         "removed_frac": removed_frac}  # fmt: skip
    return results


def main() -> None:
    out, model_dir, filters_only = sys.argv[1], sys.argv[2], "--filters" in sys.argv
    if RANK == 0 and not (Path(model_dir) / "weights.pt").exists():
        tokenizer = build_tokenizer()
        model = build_model(tokenizer, hidden_size=32, num_layers=2)
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        torch.save(model.state_dict(), Path(model_dir) / "weights.pt")
    dist.barrier()
    results = {"filters": check_filters(model_dir)}
    results["external_lib"] = {
        "registered_before": REGISTERED_BEFORE,
        "registered_after": sorted(name for name in POLICY_LOSS_REGISTRY if name.startswith("entropy_rl.")),
        "ppo_loss_wrapped": getattr(engine_workers.ppo_loss, hooks.WRAPPED, False),
    }
    if not filters_only:
        results["modes"] = check_modes(model_dir)
    if RANK == 0:
        Path(out).write_text(json.dumps(results, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
