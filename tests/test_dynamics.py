"""Parameter-space entropy dynamics (entropy_rl/param_prediction.py): first-order exactness, the logit-space limit, and
the attribution by token group under SGD and Adam; then the same quantities from a real training run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import SCRIPTS, TINY_GRPO, two_cpu_processes

from entropy_rl import param_prediction, stats
from entropy_rl.jsonl import read_rows

T, V = 12, 7  # tokens, vocabulary
# 2 gloo processes on this machine, a free port each time (accelerate's launcher cannot start FSDP on CPU).
TORCHRUN_2 = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
TORCHRUN_2 += ["--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0"]


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1).mean()


class TinyNet(torch.nn.Module):
    """Two layers sharing parameters across positions: the coupling the logit-space formula leaves out."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(T, 5, generator=gen, dtype=torch.float64)
        self.hidden = torch.nn.Parameter(torch.randn(5, 6, generator=gen, dtype=torch.float64))
        self.head = torch.nn.Parameter(torch.randn(6, V, generator=gen, dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        return torch.tanh(self.inputs @ self.hidden) @ self.head


def policy_loss(logits: torch.Tensor, targets: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    logp = logits.log_softmax(-1).gather(-1, targets[:, None])[:, 0]
    return -(advantages * logp).mean()


def data():
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, V, (T,), generator=gen), torch.randn(T, generator=gen, dtype=torch.float64)


def sgd_prediction(lr: float) -> tuple[float, float]:
    """(predicted, measured) change of the mean token entropy for one SGD step of size lr on TinyNet."""
    model = TinyNet()
    targets, advantages = data()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    prediction = param_prediction.ParamPrediction(param_prediction.trainable(model))
    before = mean_entropy(model())
    prediction.add_entropy(before * T)  # the trainer passes entropy sums
    policy_loss(model(), targets, advantages).backward()
    optimizer.step()
    with torch.no_grad():
        after = mean_entropy(model())
    return float(prediction.values()[0]) / T, float(after - before)


def test_prediction_matches_finite_difference_to_first_order():
    errors = []
    for lr in (4e-2, 2e-2, 1e-2, 5e-3):
        predicted, measured = sgd_prediction(lr)
        assert predicted != 0
        errors.append(abs(predicted - measured) / abs(measured))
    assert errors[-1] < 1e-2
    # First order: the relative error is O(step), so halving the step halves it.
    for big, small in zip(errors, errors[1:], strict=False):
        assert 1.7 < big / small < 2.3, errors


def logit_table_case(lr: float):
    """A free logit table z[T, V] trained by SGD on the token-mean policy loss: the logit-space formula's setting."""
    gen = torch.Generator().manual_seed(2)
    table = torch.nn.Parameter(torch.randn(T, V, generator=gen, dtype=torch.float64))
    targets, advantages = data()
    optimizer = torch.optim.SGD([table], lr=lr)
    prediction = param_prediction.ParamPrediction([table])
    prediction.add_entropy(mean_entropy(table) * T)
    logp = table.log_softmax(-1).gather(-1, targets[:, None])[:, 0]
    (-(advantages * logp).mean()).backward()
    assert prediction.set_direction(optimizer, scale=1.0)
    # Each quadrant's share of the same loss, as the trainer builds it (same normaliser, the group's tokens only).
    with torch.no_grad():
        lp, h, n = stats.vocab_stats(torch.eye(T, dtype=torch.float64), table.T.contiguous(), targets)
        s_minus_n = stats.discriminator(lp, h) - n
    masks = param_prediction.token_groups(
        raw_advantages=advantages,
        s_minus_n=s_minus_n,
        loss_mask=torch.ones(T),
        valid_mask=torch.ones(T),
        used_advantages=advantages,
        unclipped=torch.ones(T, dtype=torch.bool),
    )
    logp = table.log_softmax(-1).gather(-1, targets[:, None])[:, 0]
    prediction.add_groups({name: (-(advantages * logp) * masks[name]).mean() for name in param_prediction.QUADRANTS})
    optimizer.step()
    return prediction, advantages, s_minus_n, masks


def test_free_logit_table_under_sgd_equals_logit_space_formula():
    lr = 0.1
    prediction, advantages, s_minus_n, masks = logit_table_case(lr)
    values = prediction.values().tolist()
    row = param_prediction.step_values(values, tokens=T, ranks=1)
    # entropy_rl.stats' prediction -A (S - N) per token, for a unit logit step; the token-mean loss scales the
    # step of each token's logits by lr / T.
    logit_space = -(advantages * s_minus_n).mean() * lr / T
    assert row["dynamics/predicted_dH_param"] == pytest.approx(float(logit_space), rel=1e-6)
    for name in param_prediction.QUADRANTS:
        part = -(advantages * s_minus_n * masks[name]).mean() * lr / T
        assert row[f"dynamics/dH_param/{name}"] == pytest.approx(float(part), rel=1e-6, abs=1e-15)


def test_group_parts_add_up_for_sgd():
    row = param_prediction.step_values(logit_table_case(0.1)[0].values().tolist(), tokens=T, ranks=1)
    parts = [row[f"dynamics/dH_param/{name}"] for name in param_prediction.QUADRANTS]
    assert sum(abs(p) for p in parts) > 0 and sum(p != 0 for p in parts) >= 2  # several groups, not one
    assert sum(parts) == pytest.approx(row["dynamics/predicted_dH_param"], rel=1e-9)
    assert abs(row["dynamics/dH_param/other"]) < 1e-9 * abs(row["dynamics/predicted_dH_param"])


def adam_run(betas: tuple[float, float], steps: int) -> list[dict[str, float]]:
    """Rows of `steps` Adam steps on TinyNet, each split into its two advantage signs."""
    model = TinyNet()
    targets, advantages = data()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=betas)
    rows = []
    for _ in range(steps):
        optimizer.zero_grad()
        prediction = param_prediction.ParamPrediction(param_prediction.trainable(model))
        prediction.add_entropy(mean_entropy(model()) * T)
        policy_loss(model(), targets, advantages).backward()
        assert prediction.set_direction(optimizer, scale=1.0)
        pos, neg = (advantages > 0).double(), (advantages <= 0).double()
        prediction.add_groups(
            {
                "pos_adv_S_gt_N": policy_loss(model(), targets, advantages * pos),
                "neg_adv_S_gt_N": policy_loss(model(), targets, advantages * neg),
            }
        )
        optimizer.step()
        rows.append(param_prediction.step_values(prediction.values().tolist(), tokens=T, ranks=1))
    return rows


def test_adam_parts_add_up_without_momentum_carry():
    """The Adam split holds D at its post-step value: exact when the update is -D * G (no momentum carried in)."""
    for row in adam_run((0.0, 0.999), 3) + adam_run((0.9, 0.999), 1):  # beta1 = 0, or the first step (m = 0)
        assert abs(row["dynamics/dH_param/other"]) < 1e-9 * abs(row["dynamics/predicted_dH_param"])


def test_adam_momentum_carry_goes_to_other():
    rows = adam_run((0.9, 0.999), 3)
    carried = abs(rows[-1]["dynamics/dH_param/other"]) / abs(rows[-1]["dynamics/predicted_dH_param"])
    assert carried > 0.1  # the third step's update is mostly momentum from the first two


def momentum_run(
    make_optimizer, steps: int, *, moments_from: int = 0, max_norm: float = 0.0, second_order: bool = False
):
    """Rows of `steps` optimizer steps on TinyNet with the momentum groups tracked from step `moments_from` on: two
    advantage-sign groups, and a small entropy term outside them (what `rest` holds). Each row has the measured
    change `measured` too."""
    model = TinyNet()
    targets, advantages = data()
    optimizer = make_optimizer(model.parameters())
    params = param_prediction.trainable(model)
    moments = param_prediction.GroupMoments(params)
    pos, neg = (advantages > 0).double(), (advantages <= 0).double()
    rows = []
    for step in range(steps):
        optimizer.zero_grad()
        tracked = step >= moments_from
        prediction = param_prediction.ParamPrediction(
            params, moments=moments if tracked else None, second_order=second_order
        )
        before = mean_entropy(model())
        prediction.add_entropy(before * T)
        (policy_loss(model(), targets, advantages) - 0.05 * mean_entropy(model())).backward()
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if max_norm else None
        scale = param_prediction.clip_factor(None if norm is None else float(norm), max_norm)
        assert prediction.set_direction(optimizer, scale=scale)
        groups = {"pos_adv_S_gt_N": advantages * pos, "neg_adv_S_lt_N": advantages * neg}
        prediction.add_groups({name: policy_loss(model(), targets, a) for name, a in groups.items()})
        if tracked:
            prediction.advance_moments(optimizer)
        optimizer.step()
        after = mean_entropy(model())
        if second_order:
            prediction.add_entropy_after(param_prediction.grad(after * T, params))
        row = param_prediction.step_values(prediction.values().tolist(), tokens=T, ranks=1)
        rows.append({**row, "measured": (after - before).item()})
    return rows, optimizer, moments


def assert_explained(row: dict[str, float]) -> None:
    assert abs(row["dynamics/dH_param/other"]) < 1e-9 * abs(row["dynamics/predicted_dH_param"])


def test_adamw_momentum_groups_add_up_over_steps():
    """Current + carried parts of each group, `rest` and weight decay add up to dH_param on every step; the buffers
    add up to the optimizer's first moment."""

    def adamw(params):
        return torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.1)

    rows, optimizer, moments = momentum_run(adamw, 5, max_norm=0.5)
    for row in rows:
        assert_explained(row)
    last = rows[-1]
    for name in ("carried/pos_adv_S_gt_N", "carried/neg_adv_S_lt_N", "carried/rest", "rest", "weight_decay"):
        assert abs(last[f"dynamics/dH_param/{name}"]) > 1e-4 * abs(last["dynamics/predicted_dH_param"]), name
    carried = sum(abs(last[f"dynamics/dH_param/carried/{name}"]) for name in param_prediction.MOMENTUM_GROUPS)
    assert carried > 0.1 * abs(last["dynamics/predicted_dH_param"])  # what `other` held without the groups
    assert rows[0]["dynamics/dH_param/carried/pos_adv_S_gt_N"] == 0  # nothing carried into the first step
    for i, p in enumerate(moments.params):
        total = sum(moments.buffers[name][i] for name in param_prediction.MOMENTUM_GROUPS)
        assert torch.allclose(total, optimizer.state[p]["exp_avg"], rtol=1e-10, atol=1e-14)


def test_momentum_groups_started_late_take_the_earlier_moment_in_rest():
    rows, _, _ = momentum_run(lambda params: torch.optim.Adam(params, lr=1e-3), 4, moments_from=2)
    for row in rows[2:]:
        assert_explained(row)
    assert rows[2]["dynamics/dH_param/carried/pos_adv_S_gt_N"] == 0 != rows[2]["dynamics/dH_param/carried/rest"]


def test_sgd_momentum_groups_reduce_to_the_current_split():
    """Plain SGD carries nothing: the quadrant parts are those of the split without the groups, the new parts are 0
    (`rest`: the entropy term). With momentum and coupled weight decay the parts still add up."""
    plain, _, _ = momentum_run(lambda params: torch.optim.SGD(params, lr=0.1), 3, moments_from=3)
    grouped, _, _ = momentum_run(lambda params: torch.optim.SGD(params, lr=0.1), 3)
    for without, row in zip(plain, grouped, strict=True):
        assert_explained(row)
        for name in param_prediction.QUADRANTS:
            assert row[f"dynamics/dH_param/{name}"] == without[f"dynamics/dH_param/{name}"]
        for name in ("weight_decay", *(f"carried/{group}" for group in param_prediction.MOMENTUM_GROUPS)):
            assert row[f"dynamics/dH_param/{name}"] == 0
        assert row["dynamics/dH_param/rest"] == pytest.approx(without["dynamics/dH_param/other"], rel=1e-9)

    def heavy_ball(params):
        return torch.optim.SGD(params, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)

    rows, _, _ = momentum_run(heavy_ball, 4)
    for row in rows:
        assert_explained(row)
    assert rows[-1]["dynamics/dH_param/carried/neg_adv_S_lt_N"] != 0 != rows[-1]["dynamics/dH_param/weight_decay"]


def test_second_order_term_splits_by_part_and_is_exact_to_second_order():
    """The trapezoid correction 1/2 (grad H after - grad H before) . d splits exactly over the update parts (which add
    up to d), and the second-order prediction's error falls like the step cubed: its relative error like the step
    squared, where the first order's falls like the step."""

    def adamw(lr: float):
        return lambda params: torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.1)

    rows, _, _ = momentum_run(adamw(1e-2), 3, second_order=True)
    row = rows[-1]  # momentum carried from two steps, weight decay
    parts = sum(row[f"dynamics/dH_param/second_order/{name}"] for name in param_prediction.SECOND_ORDER_PARTS)
    assert parts == pytest.approx(row["dynamics/dH_param/second_order"], rel=1e-9)
    assert row["dynamics/dH_param/second_order/carried/pos_adv_S_gt_N"] != 0
    plain, _, _ = momentum_run(adamw(1e-2), 3)
    assert "dynamics/dH_param/second_order" not in plain[-1]
    for key, value in plain[-1].items():  # the first-order numbers do not change
        assert row[key] == pytest.approx(value, rel=1e-12, abs=1e-15)
    first, second = [], []
    for lr in (1e-2, 5e-3, 2.5e-3):  # one step from the same point, smaller and smaller
        row = momentum_run(adamw(lr), 1, second_order=True)[0][0]
        first.append(abs(row["dynamics/predicted_dH_param"] - row["measured"]) / abs(row["measured"]))
        second.append(abs(row["dynamics/predicted_dH_param_2nd"] - row["measured"]) / abs(row["measured"]))
    assert all(s < f / 10 for s, f in zip(second, first, strict=True)), (first, second)
    for big, small in zip(second, second[1:], strict=False):
        assert 3.3 < big / small < 4.7, second  # O(step^2) relative error; the first order's is O(step)


def test_windowed_agreement():
    predicted = [0.1, -0.2, 0.3, 0.0, 0.1, -0.1, 0.2, 0.05]
    assert param_prediction.cumulative_windows(predicted, 3) == pytest.approx([0.2, 0.0])
    out = param_prediction.agreement(predicted, [2 * x for x in predicted], window=2)
    assert out["r"] == pytest.approx(1.0) and out["r_window"] == pytest.approx(1.0) and out["pairs"] == 8


@pytest.mark.parametrize("optim", ["sgd", "adamw_torch"])
def test_trainer_logs_param_prediction_that_tracks_measured(optim, make_trainer, tmp_path):
    from entropy_rl.config import EntropyGRPOConfig
    from entropy_rl.jsonl import read_rows

    settings = {**TINY_GRPO, "max_steps": 4, "dynamics_every": 1, "optim": optim, "max_grad_norm": 0.05}
    settings["learning_rate"] = 1e-2 if optim == "sgd" else 1e-4
    args = EntropyGRPOConfig(output_dir=str(tmp_path), num_iterations=2, **settings)
    trainer = make_trainer(args)
    trainer.train()
    rows = read_rows(tmp_path / "metrics.jsonl")
    for row in rows:
        predicted, measured = row["dynamics/predicted_dH_param"], row["dynamics/measured_dH"]
        assert predicted == pytest.approx(measured, rel=0.05, abs=1e-6)
        quadrants = sum(row[f"dynamics/dH_param/{name}"] for name in param_prediction.QUADRANTS)
        assert quadrants != 0
        if optim == "sgd":  # exact split, clipping included (max_grad_norm is far below the gradient norms here)
            assert abs(row["dynamics/dH_param/other"]) < 1e-4 * abs(predicted) + 1e-9
    assert "dynamics/pearson_r_param" in rows[-1]


def test_high_entropy_token_groups_hold_only_the_tokens_of_trls_loss(make_trainer, tmp_path):
    """TRL's `top_entropy_quantile` drops the low-entropy tokens from the loss inside its own loss function: the
    quadrants must hold only the tokens it keeps (the dropped ones are `removed`), so that under SGD the parts add up
    to the prediction exactly, as for GRPO."""
    from entropy_rl.config import EntropyGRPOConfig
    from entropy_rl.jsonl import read_rows

    settings = {**TINY_GRPO, "max_steps": 2, "dynamics_every": 1, "optim": "sgd", "learning_rate": 1e-2}
    args = EntropyGRPOConfig(
        output_dir=str(tmp_path), num_iterations=2, regularizer="high_entropy_tokens", max_grad_norm=0.05, **settings
    )
    make_trainer(args).train()
    for row in read_rows(tmp_path / "metrics.jsonl"):
        predicted = row["dynamics/predicted_dH_param"]
        assert abs(row["dynamics/dH_param/other"]) < 1e-4 * abs(predicted) + 1e-9, row
        assert row["dynamics/dH_param/removed"] != 0  # the dropped tokens had advantages: they are the removed group


def test_trainer_momentum_groups_explain_the_whole_prediction(make_trainer, tmp_path):
    """AdamW with weight decay, two iterations per rollout batch, measuring every 2nd step: with the option on (and the
    second order), the groups' current and carried parts, `rest` and weight decay add up to dH_param, and their
    curvature shares to the second-order term; every number the run logs without them (training, prediction, the
    quadrants' current parts) is the same."""
    from entropy_rl.config import EntropyGRPOConfig

    settings = {**TINY_GRPO, "max_steps": 4, "dynamics_every": 2, "learning_rate": 1e-3, "weight_decay": 0.1}
    rows = {}
    for on in (False, True):
        out = tmp_path / str(on)
        trainer = make_trainer(
            EntropyGRPOConfig(
                output_dir=str(out),
                num_iterations=2,
                dynamics_momentum_groups=on,
                dynamics_second_order=on,
                **settings,
            )
        )
        trainer.train()
        rows[on] = [row for row in read_rows(out / "metrics.jsonl") if "dynamics/measured_dH" in row]
    assert len(rows[True]) == 2
    for plain, grouped in zip(rows[False], rows[True], strict=True):
        keys = [k for k in plain if k.startswith(("dynamics/", "entropy/", "cov/")) and k != "dynamics/dH_param/other"]
        assert {k: grouped[k] for k in keys} == pytest.approx({k: plain[k] for k in keys}, rel=1e-6, abs=1e-12)
        total = grouped["dynamics/predicted_dH_param"]
        assert abs(grouped["dynamics/dH_param/other"]) < 1e-4 * abs(total)
        assert grouped["dynamics/dH_param/weight_decay"] != 0
        assert any(grouped[f"dynamics/dH_param/carried/{name}"] for name in param_prediction.QUADRANTS)
        curvature = grouped["dynamics/dH_param/second_order"]
        shares = [grouped[f"dynamics/dH_param/second_order/{name}"] for name in param_prediction.SECOND_ORDER_PARTS]
        assert curvature != 0 and sum(shares) == pytest.approx(curvature, rel=1e-4, abs=1e-12)
        assert grouped["dynamics/predicted_dH_param_2nd"] == pytest.approx(total + curvature, rel=1e-12)
    # `other` held the carried momentum and the weight decay before; the quadrants now take what they built.
    assert abs(rows[False][-1]["dynamics/dH_param/other"]) > 1e-2 * abs(rows[False][-1]["dynamics/predicted_dH_param"])


def test_momentum_groups_refused_with_several_processes(make_trainer, tmp_path):
    from entropy_rl.config import EntropyGRPOConfig
    from entropy_rl.errors import ConfigError

    trainer = make_trainer(
        EntropyGRPOConfig(output_dir=str(tmp_path), dynamics_momentum_groups=True, **{**TINY_GRPO, "max_steps": 1})
    )
    trainer._check_param_dynamics()  # one process: allowed
    trainer.is_fsdp_enabled = True
    with pytest.raises(ConfigError, match=r"^invalid config: dynamics_momentum_groups=True; allowed: False with sev"):
        trainer._check_param_dynamics()
    trainer.is_fsdp_enabled = False
    trainer._world = lambda: 2  # DDP
    with pytest.raises(ConfigError, match="dynamics_momentum_groups=True; allowed: False with several processes"):
        trainer._check_param_dynamics()
    with pytest.raises(ConfigError, match="dynamics_momentum_groups=True; allowed: False unless dynamics_param"):
        EntropyGRPOConfig(output_dir=str(tmp_path), dynamics_momentum_groups=True, dynamics_param=False)
    with pytest.raises(ConfigError, match="dynamics_second_order=True; allowed: False unless dynamics_momentum_groups"):
        EntropyGRPOConfig(output_dir=str(tmp_path), dynamics_second_order=True)


def synthetic_run_dir(path, steps: int = 40):
    """A run directory whose measured steps carry both predictions and the attribution."""
    from entropy_rl.jsonl import rewrite_rows

    rows = []
    for step in range(1, steps + 1):
        row = {"step": step, "entropy/token_mean": 1.0 - step / 200, "reward": step / steps, "cov/logp_adv": 0.1}
        row["entropy/seq_mean"] = row["entropy/token_mean"]
        if step % 5 == 0:
            measured = -0.01 * (1 + (step % 3))
            row |= {"dynamics/measured_dH": measured, "dynamics/predicted_dH": 0.5 + step % 2}
            row |= {"dynamics/predicted_dH_param": measured * 1.01, "dynamics/dH_param/other": 0.0}
            row |= {f"dynamics/dH_param/{name}": measured / 4 for name in param_prediction.QUADRANTS}
        rows.append(row)
    path.mkdir(parents=True)
    rewrite_rows(path / "metrics.jsonl", rows)
    return rows


def test_dynamics_figure_and_summary_lines(tmp_path):
    from entropy_rl.cli.plot import main as plot_main
    from entropy_rl.cli.train import agreement_lines
    from entropy_rl.plot import plot_dynamics
    from entropy_rl.rundir import load_run

    rows = synthetic_run_dir(tmp_path / "run", steps=100)
    path = plot_dynamics(load_run(tmp_path / "run"))
    assert path == tmp_path / "run" / "dynamics.png" and path.read_bytes().startswith(b"\x89PNG")
    lines = agreement_lines(rows)
    assert lines[0].startswith("logit-space prediction vs measured entropy change: r = ")
    assert lines[1].startswith("parameter-space prediction vs measured entropy change: r = 1.00 over 20 measured steps")
    assert "r = 1.00 over windows of 5" in lines[1]
    assert plot_main([str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "dynamics.png").is_file()


def test_dynamics_figure_with_momentum_groups(tmp_path):
    from entropy_rl.jsonl import rewrite_rows
    from entropy_rl.plot import plot_dynamics
    from entropy_rl.rundir import load_run

    rows = synthetic_run_dir(tmp_path / "run", steps=20)
    for row in rows:
        if "dynamics/measured_dH" in row:
            row |= {
                f"dynamics/dH_param/{name}": row["dynamics/measured_dH"] / 10
                for name in param_prediction.MOMENTUM_PARTS
            }
    rewrite_rows(tmp_path / "run" / "metrics.jsonl", rows)
    assert plot_dynamics(load_run(tmp_path / "run")).read_bytes().startswith(b"\x89PNG")


def test_study_attribution_folds_the_carried_parts_into_their_groups(tmp_path):
    from entropy_rl.jsonl import rewrite_rows
    from entropy_rl.rundir import load_run
    from entropy_rl.study.analysis import _attribution_numbers

    rows = synthetic_run_dir(tmp_path / "run", steps=10)  # measured: steps 5 and 10, each quadrant measured / 4
    plain = _attribution_numbers(load_run(tmp_path / "run"))
    assert "momentum_groups" not in plain
    for row in rows:
        if "dynamics/measured_dH" in row:
            row |= {f"dynamics/dH_param/{name}": 1.0 for name in param_prediction.MOMENTUM_PARTS}
    rewrite_rows(tmp_path / "run" / "metrics.jsonl", rows)
    grouped = _attribution_numbers(load_run(tmp_path / "run"))
    assert grouped["momentum_groups"] == 1.0
    for name in param_prediction.QUADRANTS:
        assert grouped[f"dH_{name}"] == pytest.approx(plain[f"dH_{name}"] + 2.0)  # + carried/<name> on 2 steps
    assert grouped["dH_other"] == pytest.approx(plain["dH_other"] + 6.0)  # + rest, carried/rest, weight_decay


def test_param_dynamics_refused_under_fsdp1_names_the_field(make_trainer, tmp_path, monkeypatch):
    from accelerate import Accelerator

    from entropy_rl.config import EntropyGRPOConfig
    from entropy_rl.errors import ConfigError

    args = EntropyGRPOConfig(output_dir=str(tmp_path), **{**TINY_GRPO, "max_steps": 1})
    trainer = make_trainer(args)
    trainer.is_fsdp_enabled = True  # what Trainer.__init__ sets under an FSDP launch
    with pytest.raises(ConfigError, match="dynamics_param=True with FSDP version 1"):
        trainer._check_param_dynamics()
    monkeypatch.setattr(Accelerator, "is_fsdp2", property(lambda self: True))
    trainer._check_param_dynamics()  # FSDP2 is supported
    monkeypatch.undo()
    trainer.args.dynamics_param = False
    trainer._check_param_dynamics()  # the way out the message names


@pytest.mark.slow
def test_fsdp2_sharded_prediction_equals_the_unsharded_one(tmp_path):
    """fully_shard over 2 gloo ranks: the same prediction and attribution, and the optimizer's gradient intact."""
    script = SCRIPTS / "fsdp_dynamics_check.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [*TORCHRUN_2, str(script), str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    for rank in range(2):
        out = json.loads((tmp_path / f"rank{rank}.json").read_text())
        reference, sharded = out["reference"], out["sharded"]
        assert reference[0] != 0 and reference[1] == 1.0 and sharded[1] == 2.0  # every rank attributed
        assert sharded[0] == pytest.approx(reference[0], rel=1e-9)
        assert sharded[2:] == pytest.approx(reference[2:], rel=1e-9, abs=1e-15)
        assert any(reference[2:])
        assert out["drift"] < 1e-12


def test_lora_prediction_uses_the_adapters_and_tracks_measured(make_trainer, tmp_path):
    from peft import LoraConfig

    from entropy_rl.config import EntropyGRPOConfig
    from entropy_rl.jsonl import read_rows

    settings = {**TINY_GRPO, "max_steps": 3, "dynamics_every": 1, "optim": "sgd", "learning_rate": 0.5}
    trainer = make_trainer(
        EntropyGRPOConfig(output_dir=str(tmp_path), **settings),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    params = param_prediction.trainable(trainer.accelerator.unwrap_model(trainer.model))
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert len(params) == len(names) > 0 and all("lora_" in n for n in names)
    trainer.train()
    for row in read_rows(tmp_path / "metrics.jsonl"):
        assert row["dynamics/measured_dH"] != 0
        # First order: LoRA's B starts at 0, so the step's output change is small but the entropy's curvature along it
        # is not; at this step size the second-order term measured ~10 % of the change.
        assert row["dynamics/predicted_dH_param"] == pytest.approx(row["dynamics/measured_dH"], rel=0.2)
        assert abs(row["dynamics/dH_param/other"]) < 1e-4 * abs(row["dynamics/predicted_dH_param"]) + 1e-9


@pytest.mark.slow
def test_ddp_prediction_tracks_measured_and_adds_up_for_sgd(tmp_path, tiny_model_dir):
    """2 DDP processes (gloo): each rank's dot products join the step's all-reduce, the attribution pairs the entropy
    gradient of both ranks' tokens with each rank's groups; under SGD the parts still add up to the whole."""
    run = tmp_path / "run"
    flags = {
        "--model_name_or_path": str(tiny_model_dir),
        "--output_dir": str(run),
        "--reward_funcs": "helpers:length_parity_reward",  # a random tiny model never adds up right
        "--max_steps": "3",
        "--per_device_train_batch_size": "8",
        "--num_generations": "4",
        "--max_completion_length": "6",
        "--optim": "sgd",
        "--learning_rate": "1e-2",
        "--max_grad_norm": "0.05",
        "--num_iterations": "2",
        "--dynamics_every": "1",
        "--save_strategy": "no",
        "--disable_tqdm": "true",
    }
    command = [*two_cpu_processes(), "-m", "entropy_rl.cli", "train", *(x for item in flags.items() for x in item)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = read_rows(run / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3], rows
    for row in rows:
        predicted = row["dynamics/predicted_dH_param"]
        assert predicted == pytest.approx(row["dynamics/measured_dH"], rel=0.05, abs=1e-6)
        assert any(row[f"dynamics/dH_param/{name}"] for name in param_prediction.QUADRANTS), row
        assert abs(row["dynamics/dH_param/other"]) < 1e-4 * abs(predicted) + 1e-9


@pytest.mark.slow
def test_accelerate_fsdp2_training_equals_ddp(tmp_path):
    """The whole `entropy-rl train` under accelerate's FSDP2 (2 CPU processes, tests/scripts/fsdp2_cpu_train.py) logs
    the same diagnostics, prediction and attribution as under DDP, step by step."""
    flags = ["--max_steps", "2", "--dynamics_every", "1", "--per_device_train_batch_size", "16"]
    flags += ["--save_strategy", "no", "--curve_benchmarks", "arithmetic", "--eval_steps", "1000"]
    flags += ["--disable_tqdm", "true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    fsdp = [*TORCHRUN_2, str(SCRIPTS / "fsdp2_cpu_train.py")]
    ddp = [*two_cpu_processes(), "-m", "entropy_rl.cli", "train"]
    rows = {}
    for name, launch in (("fsdp2", fsdp), ("ddp", ddp)):
        out = tmp_path / name
        done = subprocess.run([*launch, *flags, "--output_dir", str(out)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-4000:]
        rows[name] = read_rows(out / "metrics.jsonl")
        if name == "fsdp2":
            assert "accelerate state: FSDP fsdp2=True" in done.stdout
    assert [row["step"] for row in rows["fsdp2"]] == [1, 2]
    for sharded, plain in zip(rows["fsdp2"], rows["ddp"], strict=True):
        keys = [key for key in plain if key.startswith(("dynamics/", "entropy/", "cov/")) or key == "reward"]
        assert any(key.startswith("dynamics/dH_param/") for key in keys)
        # abs: `other` is float noise (~1e-8) on Adam's first step, where the split is exact
        parts = [key for key in keys if key.startswith("dynamics/dH_param/")]
        whole = [key for key in keys if key not in parts]
        expected = pytest.approx({key: plain[key] for key in whole}, rel=1e-5, abs=1e-7)
        assert {key: sharded[key] for key in whole} == expected
        # The split by token group: on the shipped toy policy, step 2's parts differ between FSDP2 and DDP by up to
        # 3.6e-5 nats (1.5 % of the smallest part) while they add up to the same prediction (not yet explained).
        assert sum(sharded[key] for key in parts) == pytest.approx(sum(plain[key] for key in parts), rel=1e-5)
        assert {key: sharded[key] for key in parts} == pytest.approx({key: plain[key] for key in parts}, abs=1e-4)


def test_trainer_sharded_branch_equals_the_plain_one(make_trainer, tmp_path):
    """The trainer's FSDP2 path (gradients by .backward(), a fresh forward per group, every group on every rank) run
    on one process gives the same prediction and attribution as the autograd.grad path, and the same training."""
    from entropy_rl.config import EntropyGRPOConfig
    from entropy_rl.jsonl import read_rows

    settings = {**TINY_GRPO, "max_steps": 2, "dynamics_every": 1, "learning_rate": 1e-3}
    rows = {}
    for sharded in (False, True):
        args = EntropyGRPOConfig(output_dir=str(tmp_path / str(sharded)), num_iterations=2, **settings)
        trainer = make_trainer(args)
        trainer._sharded_in_place = lambda sharded=sharded: sharded  # one process: a plain backward, times 1
        trainer.train()
        rows[sharded] = read_rows(tmp_path / str(sharded) / "metrics.jsonl")
    for plain, sharded in zip(rows[False], rows[True], strict=True):
        keys = [key for key in plain if key.startswith("dynamics/") or key in ("entropy/token_mean", "reward")]
        assert any(key.startswith("dynamics/dH_param/") for key in keys)
        assert {key: sharded[key] for key in keys} == pytest.approx({key: plain[key] for key in keys}, rel=1e-5)
