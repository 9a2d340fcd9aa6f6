"""Run by tests/test_dynamics.py under `torchrun --nproc_per_node 2` (gloo, CPU): the parameter-space prediction on an
FSDP2-sharded model (torch's fully_shard, what accelerate's fsdp_version 2 applies) equals the unsharded one.

Every rank computes the reference on the whole fixed batch with an unsharded copy of the model, then the sharded
version on its half of the batch, with gradients through FSDP's hooks (param_prediction.grad_through_hooks), and writes
both to OUT_DIR/rank<r>.json, with the largest parameter difference after the two AdamW steps (the optimizer's gradient
must survive the extra backward passes).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

ROWS, PROMPT, COMPLETION = 8, 4, 5


def fixed_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, COMPLETION + 1, (ROWS, 1), generator=g)
    return {
        "ids": torch.randint(4, 20, (ROWS, PROMPT + COMPLETION), generator=g),
        "mask": (torch.arange(COMPLETION)[None, :] < lengths).double(),
        "advantages": torch.randn(ROWS, generator=g, dtype=torch.float64),
    }


def token_terms(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p of the completion tokens, their entropies), [rows, COMPLETION]."""
    logits = model(input_ids=batch["ids"]).logits[:, PROMPT - 1 : -1].double()
    logp_all = logits.log_softmax(-1)
    logp = logp_all.gather(-1, batch["ids"][:, PROMPT:, None])[..., 0]
    return logp, -(logp_all.exp() * logp_all).sum(-1)


def group_losses(logp, batch, tokens: float, factor: float) -> dict[str, torch.Tensor]:
    """The policy-gradient loss -A log p / tokens split into the positive- and negative-advantage tokens."""
    advantages = batch["advantages"][:, None]
    per_token = -(advantages * logp) * batch["mask"] * factor / tokens
    return {
        "pos_adv_S_gt_N": (per_token * (advantages > 0)).sum(),
        "neg_adv_S_lt_N": (per_token * (advantages < 0)).sum(),
    }


def predict(model, batch, tokens: float, *, world: int, sharded: bool) -> list[float]:
    """One AdamW step (two, so the preconditioner has state) with the prediction on the second; its values."""
    from entropy_rl import param_prediction

    params = param_prediction.trainable(model)
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    # The loss of a rank is `world` times its share, so FSDP's average over ranks is the whole batch's gradient
    # (DDP's and TRL's convention); each group's part is then scaled by 1 / world, as the trainer does.
    factor = world if sharded else 1.0
    for step in range(2):
        optimizer.zero_grad()
        logp, entropies = token_terms(model, batch)
        sum(group_losses(logp, batch, tokens, factor).values()).backward()
        if step == 0:
            optimizer.step()
            continue
        prediction = param_prediction.ParamPrediction(params, sharded_world=world if sharded else 0)
        prediction.add_entropy((token_terms(model, batch)[1] * batch["mask"]).sum())
        assert prediction.set_direction(optimizer, scale=1.0 / factor)
        for name in ("pos_adv_S_gt_N", "neg_adv_S_lt_N"):  # a fresh forward per backward, as the trainer does
            prediction.add_groups({name: group_losses(token_terms(model, batch)[0], batch, tokens, factor)[name]})
        optimizer.step()
    values = prediction.values()
    if sharded:
        dist.all_reduce(values)
    return values.tolist()


def main(out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from entropy_rl.toy import build_model, build_tokenizer

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build_model(build_tokenizer(), hidden_size=32, num_layers=2).double()
    sharded_model = copy.deepcopy(model)
    batch = fixed_batch()
    tokens = float(batch["mask"].sum())
    reference = predict(model, batch, tokens, world=world, sharded=False)

    mesh = init_device_mesh("cpu", (world,))
    for layer in sharded_model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(sharded_model, mesh=mesh)
    half = {key: value[rank * ROWS // world : (rank + 1) * ROWS // world] for key, value in batch.items()}
    sharded = predict(sharded_model, half, tokens, world=world, sharded=True)
    drift = max(
        float((p.full_tensor() - q).abs().max())
        for p, q in zip(sharded_model.parameters(), model.parameters(), strict=True)
    )
    out = {"reference": reference, "sharded": sharded, "drift": drift}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
