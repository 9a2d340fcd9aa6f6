"""entropy_rl.verl_plugin against verl 0.9.1: registry, exactness, config, contract, entry point, FSDP engine steps.

Runs in the venv .ci/verl_env builds (`pytest -m verl`); skipped where verl is absent. The engine tests start
tests/scripts/verl_engine_check.py in subprocesses (a test-only CPU platform, gloo, sdpa), one of them under torchrun.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import SCRIPTS

pytestmark = pytest.mark.verl
verl = pytest.importorskip("verl")

import torch  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402
from verl.workers.config import PolicyLossConfig as VerlPolicyLossConfig  # noqa: E402

from entropy_rl import verl_plugin  # noqa: E402
from entropy_rl.errors import ConfigError  # noqa: E402
from entropy_rl.regularizers import REGISTRY, Kind, get_regularizer  # noqa: E402
from entropy_rl.regularizers.base import AGG_MODES  # noqa: E402
from entropy_rl.tokens import TokenBatch  # noqa: E402
from entropy_rl.verl_plugin import PolicyLossConfig, hooks, losses  # noqa: E402

VERL_AGG_MODES = (*AGG_MODES, "token-sum")
CHECK = SCRIPTS / "verl_engine_check.py"
ENGINE_MODES = 9  # tests/scripts/verl_engine_check.py MODES


def make_batch(seed: int, rows: int = 6, length: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (rows,), generator=g)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    logp = (-torch.rand(rows, length, generator=g) * 3).requires_grad_()
    old = (logp.detach() + 0.3 * torch.randn(rows, length, generator=g)).clamp(max=0)
    adv = torch.randn(rows, 1, generator=g).expand(rows, length).clone()
    entropy = torch.rand(rows, length, generator=g) * 2
    nec = torch.rand(rows, length, generator=g) * 0.5 - 0.25
    weights = torch.rand(rows, length, generator=g) + 0.5
    return {"logp": logp, "old": old, "adv": adv, "mask": mask, "entropy": entropy, "nec": nec, "weights": weights}


def actor_config(policy_loss, global_batch_info=None, clip_high=0.28):
    """The ActorConfig fields a policy loss reads (verl passes the whole ActorConfig)."""
    return SimpleNamespace(
        policy_loss=policy_loss,
        clip_ratio=0.2,
        clip_ratio_low=None,
        clip_ratio_high=clip_high,
        global_batch_info=dict(global_batch_info or {}),
    )


def call(fn, b, mode, config, weights=None):
    return fn(
        old_log_prob=b["old"],
        log_prob=b["logp"],
        advantages=b["adv"],
        response_mask=b["mask"],
        loss_agg_mode=mode,
        config=config,
        rollout_is_weights=weights,
    )


def test_every_mode_registered():
    registered = {name for name in core_algos.POLICY_LOSS_REGISTRY if name.startswith(verl_plugin.MODE_PREFIX)}
    assert registered == {verl_plugin.MODE_PREFIX + spec for spec in verl_plugin.MODES}
    in_verl = {name for name, cls in REGISTRY.items() if cls.kind in ("loss", "filter")} | {"high_entropy_tokens"}
    assert {part for spec in verl_plugin.MODES for part in spec.split("+")} == in_verl
    assert "clip_b+steer" in verl_plugin.MODES and len(verl_plugin.MODES) == 23


VERL_PARAMS = {
    "clip_cov": [dict(clip_cov_ratio=0.2, clip_cov_lb=0.0, clip_cov_ub=5.0), dict(clip_cov_ratio=0.05)],
    "kl_cov": [dict(kl_cov_ratio=0.1, ppo_kl_coef=1.0), dict(kl_cov_ratio=0.02)],
}


@pytest.mark.parametrize("method", ["clip_cov", "kl_cov"])
def test_bit_identical_to_verl(method):
    """Called as ppo_loss calls a policy loss: the same loss and gradient bits as verl's own, over seeds, every
    aggregation mode, with and without data-parallel normalisation and rollout-correction weights."""
    ours, theirs = core_algos.get_policy_loss_fn(f"entropy_rl.{method}"), core_algos.get_policy_loss_fn(method)
    dp2 = {"dp_size": 2, "batch_num_tokens": 97, "global_batch_size": 12, "loss_scale_factor": 16}
    compared = 0
    for seed in range(20):
        for mode in VERL_AGG_MODES:
            for info in (None, dp2):
                for params in VERL_PARAMS[method]:
                    b = make_batch(seed)
                    config = actor_config(VerlPolicyLossConfig(loss_mode=method, **params), info)
                    weights = b["weights"] if seed % 2 else None
                    results = []
                    for fn in (theirs, ours):
                        torch.manual_seed(seed)  # clip_cov draws its tokens from the global RNG
                        loss, _ = call(fn, b, mode, config, weights)
                        results.append((loss.detach(), torch.autograd.grad(loss, b["logp"])[0]))
                    (loss_v, grad_v), (loss_o, grad_o) = results
                    assert torch.equal(loss_v, loss_o), (seed, mode, info, params, loss_v, loss_o)
                    assert torch.equal(grad_v, grad_o), (seed, mode, info, params)
                    compared += 1
    assert compared == 20 * 5 * 2 * 2


@pytest.mark.parametrize("spec", [spec for spec in verl_plugin.MODES if "high_entropy_tokens" not in spec])
def test_equals_entropy_rl(spec):
    """Every other mode equals entropy-rl's own `policy_loss` in every aggregation mode, given H and N as the
    ppo_loss wrapper passes them. A step-level filter has already shrunk the response mask, as the step hook does,
    with the filter's own edits: the composition is entropy-rl's (filters first). With data-parallel normalisation
    (dp_size 2, global token / sequence counts) the loss is entropy-rl's rescaled from local to global counts."""
    fn = core_algos.get_policy_loss_fn(f"entropy_rl.{spec}")
    reg = get_regularizer(spec)
    filters = [REGISTRY[name]() for name in spec.split("+") if REGISTRY[name].kind == Kind.FILTER]
    dp2 = {"dp_size": 2, "batch_num_tokens": 97, "global_batch_size": 12, "loss_scale_factor": 16}
    for seed in range(5):
        for mode in AGG_MODES:
            for info in (None, dp2):
                b = make_batch(seed)
                mask = b["mask"]
                if filters:
                    batch = TokenBatch(b["old"], b["old"], b["adv"], mask, b["entropy"], b["nec"])
                    mask = mask & filters[0].edits(batch).keep
                # verl's keys set to entropy-rl's defaults (left unset, kl_cov would take verl's: docs/verl.md)
                kl_cov = REGISTRY["kl_cov"]
                policy_loss = VerlPolicyLossConfig(
                    loss_mode=f"entropy_rl.{spec}", kl_cov_ratio=kl_cov.kl_cov_ratio, ppo_kl_coef=kl_cov.kl_cov_coef
                )
                token = losses.LOSS_INPUTS.set(losses.LossInputs(b["entropy"], b["nec"], bool(filters)))
                try:
                    torch.manual_seed(seed)
                    loss, metrics = call(fn, {**b, "mask": mask}, mode, actor_config(policy_loss, info))
                finally:
                    losses.LOSS_INPUTS.reset(token)
                torch.manual_seed(seed)
                expected, _ = reg.policy_loss(
                    logps=b["logp"], old_logps=b["old"], advantages=b["adv"], mask=b["mask"],
                    entropies=b["entropy"], nec=b["nec"], clip_ratio_low=0.2, clip_ratio_high=0.28, loss_agg_mode=mode,
                )  # fmt: skip
                if info:  # entropy-rl normalises by this batch's kept tokens / non-empty rows, verl by the global ones
                    rows = int((mask.sum(-1) > 0).sum()) / info["global_batch_size"]
                    local_to_global = {
                        "token-mean": int(mask.sum()) / info["batch_num_tokens"],
                        "seq-mean-token-mean": rows,
                        "seq-mean-token-sum": rows,
                        "seq-mean-token-sum-norm": rows * mask.shape[-1] / info["loss_scale_factor"],
                    }
                    expected = expected * local_to_global[mode] * info["dp_size"]
                assert abs(loss.item() - expected.item()) <= 1e-6, (seed, mode, info, loss.item(), expected.item())
                assert {"actor/ppo_kl", "actor/pg_clipfrac"} <= set(metrics)


def test_high_entropy_tokens_is_trls_mask():
    """The high_entropy_tokens part keeps exactly the tokens TRL's `top_entropy_quantile` keeps."""
    from trl import GRPOTrainer

    accelerator = SimpleNamespace(pad_across_processes=lambda x, **kwargs: x, gather=lambda x: x)
    one_process = SimpleNamespace(accelerator=accelerator)
    for seed in range(10):
        b = make_batch(seed)
        for q in (0.2, 0.5, 1.0):
            batch = TokenBatch(b["logp"], b["old"], b["adv"], b["mask"], b["entropy"])
            weight = losses.HighEntropyWeight(top_entropy_quantile=q).edits(batch).weight
            trl_mask = GRPOTrainer.get_high_entropy_mask(one_process, b["entropy"], b["mask"], 1 - q)
            assert torch.equal(weight.bool(), trl_mask), (seed, q)


@pytest.mark.parametrize(
    ("spec", "inputs", "hint"),
    [
        ("steer", (None, None, False), "calculate_entropy=True"),
        ("high_entropy_tokens", (None, None, False), "calculate_entropy=True"),
        ("clip_cov", None, None),
        ("clip_b+steer", (torch.ones(6, 12), None, False), "train_mini_batch"),
    ],
)
def test_missing_inputs_name_the_fix(spec, inputs, hint):
    b = make_batch(0)
    config = actor_config(VerlPolicyLossConfig(loss_mode=f"entropy_rl.{spec}"))
    token = losses.LOSS_INPUTS.set(None if inputs is None else losses.LossInputs(*inputs))
    try:
        if hint is None:
            call(core_algos.get_policy_loss_fn(f"entropy_rl.{spec}"), b, "token-mean", config)
        else:
            with pytest.raises(ConfigError, match=hint):
                call(core_algos.get_policy_loss_fn(f"entropy_rl.{spec}"), b, "token-mean", config)
    finally:
        losses.LOSS_INPUTS.reset(token)


def test_exact_steer_without_n_names_the_fix():
    b = make_batch(0)
    config = actor_config(PolicyLossConfig(loss_mode="entropy_rl.steer", steer_estimator="exact"))
    token = losses.LOSS_INPUTS.set(losses.LossInputs(b["entropy"], None, False))
    try:
        with pytest.raises(ConfigError, match="use_fused_kernels=False"):
            call(core_algos.get_policy_loss_fn("entropy_rl.steer"), b, "token-mean", config)
    finally:
        losses.LOSS_INPUTS.reset(token)


def test_policy_loss_config_is_generated_from_the_registry():
    """Every parameter of every method in MODES is a field (verl's own keys reused), with entropy-rl's default."""
    fields = {f.name: f for f in dataclasses.fields(PolicyLossConfig)}
    for spec in verl_plugin.MODES:
        for name in spec.split("+"):
            cls = losses.METHODS[name]
            for f in dataclasses.fields(cls):
                key = losses.VERL_KEYS.get(f.name, f.name)
                assert key in fields, key
                if key == f.name and key not in {g.name for g in dataclasses.fields(VerlPolicyLossConfig)}:
                    assert fields[key].default == f.default
    # kl_cov reads verl's keys, so its defaults are verl's (docs/verl.md)
    reg = losses.edit_schedule("kl_cov", VerlPolicyLossConfig()).regularizer
    assert (reg.kl_cov_ratio, reg.kl_cov_coef) == (2e-4, 0.1)
    reg = losses.edit_schedule("clip_b+steer", PolicyLossConfig(clip_b_mu=2.0, steer_mapping="exp")).regularizer
    assert (reg.parts[0].clip_b_mu, reg.parts[1].steer_mapping) == (2.0, "exp")
    with pytest.raises(ConfigError, match="steer_mapping"):
        losses.edit_schedule("steer", PolicyLossConfig(steer_mapping="cubic"))


def test_docs_name_every_parameter_key():
    text = (Path(__file__).parents[1] / "docs" / "verl.md").read_text()
    extra = {f.name for f in dataclasses.fields(PolicyLossConfig)} - {
        f.name for f in dataclasses.fields(VerlPolicyLossConfig)
    }
    assert extra and all(f"`{name}`" in text for name in extra), sorted(extra)
    assert all(f"`{key}`" in text for key in losses.VERL_KEYS.values())


def compose_actor(*overrides: str):
    """verl's own ppo_trainer.yaml with command-line overrides, converted as the actor worker converts it."""
    from hydra import compose, initialize_config_dir
    from verl.utils.config import omega_conf_to_dataclass

    config_dir = str(Path(verl.__file__).parent / "trainer" / "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=list(overrides))
    return omega_conf_to_dataclass(cfg.actor_rollout_ref.actor.policy_loss)


def test_hydra_one_line_and_parameter_keys():
    key = "actor_rollout_ref.actor.policy_loss"
    plain = compose_actor(f"{key}.loss_mode=entropy_rl.clip_b+steer")
    assert plain.loss_mode == "entropy_rl.clip_b+steer"
    assert losses.edit_schedule("clip_b+steer", plain).regularizer.parts[0].clip_b_mu == REGISTRY["clip_b"].clip_b_mu
    tuned = compose_actor(
        f"{key}.loss_mode=entropy_rl.clip_b+steer",
        f"{key}._target_=entropy_rl.verl_plugin.PolicyLossConfig",
        f"+{key}.steer_mapping=exp",
        f"+{key}.clip_b_mu=2.0",
    )
    assert isinstance(tuned, PolicyLossConfig) and (tuned.steer_mapping, tuned.clip_b_mu) == ("exp", 2.0)
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException):  # verl's stock target has no such field: hence the _target_ line
        compose_actor(f"{key}.loss_mode=entropy_rl.steer", f"+{key}.steer_mapping=exp")


def test_contract():
    """Every verl name the plugin hooks or calls, with the signature it relies on: fails loudly on a verl change."""
    from verl.workers import engine_workers
    from verl.workers.engine.fsdp import transformer_impl
    from verl.workers.utils import losses as verl_losses
    from verl.workers.utils import padding

    assert verl.__version__ == verl_plugin.VERL_VERSION

    def params(fn):
        return list(inspect.signature(inspect.unwrap(fn)).parameters)

    assert params(verl_losses.ppo_loss) == ["config", "model_output", "data", "dp_group"]
    for module in hooks.PPO_LOSS_IMPORTERS:
        assert sys.modules[module].ppo_loss is verl_losses.ppo_loss  # rebound to the wrapper
    assert getattr(verl_losses.ppo_loss, hooks.WRAPPED)
    policy_loss_args = ["old_log_prob", "log_prob", "advantages", "response_mask", "loss_agg_mode", "config"]
    assert params(core_algos.compute_policy_loss_clip_cov) == [*policy_loss_args, "rollout_is_weights"]
    assert params(core_algos.agg_loss) == [
        "loss_mat", "loss_mask", "loss_agg_mode", "dp_size", "batch_num_tokens", "global_batch_size",
        "loss_scale_factor",
    ]  # fmt: skip
    engine = transformer_impl.FSDPEngineWithLMHead
    assert params(engine.prepare_model_outputs) == ["self", "output", "output_args", "micro_batch",
                                                    "logits_processor_func"]  # fmt: skip
    assert params(engine._gather_and_unpad_packed) == ["self", "tensor", "pad_size"]
    assert params(transformer_impl._scale_logits_by_temperature) == ["logits", "temperature", "is_unit_temperature"]
    worker = engine_workers.TrainingWorker
    assert params(worker.train_mini_batch) == ["self", "data"] and params(worker.infer_batch) == ["self", "data"]
    assert getattr(worker.train_mini_batch, hooks.WRAPPED) and getattr(engine.prepare_model_outputs, hooks.WRAPPED)
    # the dispatch attribute verl's single controller reads survives the wrapping
    from verl.single_controller.base.decorator import MAGIC_ATTR

    assert hasattr(worker.train_mini_batch, MAGIC_ATTR)
    assert params(padding.no_padding_2_padding) == ["tensor", "data"]
    # verl's model patching still asks its module-level is_trl_available before touching TRL's value-head model
    from verl.models.transformers import monkey_patch

    assert getattr(monkey_patch.is_trl_available, hooks.WRAPPED)
    assert "is_trl_available()" in inspect.getsource(monkey_patch.apply_monkey_patch)
    assert {"entropy_coeff", "clip_ratio_high", "calculate_entropy"} <= {
        f.name for f in dataclasses.fields(verl.workers.config.ActorConfig)
    }
    hooks.install()  # idempotent: nothing is wrapped twice
    assert not getattr(inspect.unwrap(verl_losses.ppo_loss), hooks.WRAPPED, False)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )


LOADED = (
    "import verl\n"
    "from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY as R\n"
    "print('LOADED', 'entropy_rl.clip_b+steer' in R)\n"
)


def test_entry_point_loads_on_import_verl():
    """`import verl` loads the plugin; it imports neither TRL nor entropy-rl's trainer (torch and verl only)."""
    code = LOADED + "import sys\nprint('HEAVY', [m for m in ('trl', 'entropy_rl.trainer') if m in sys.modules])\n"
    out = run_python(code, VERL_USE_EXTERNAL_PLUGINS="auto")
    assert "LOADED True" in out.stdout and "HEAVY []" in out.stdout, out.stdout + out.stderr[-2000:]


def test_broken_plugin_is_reported():
    """verl swallows plugin import errors at DEBUG; the plugin's own WARNING names the failure."""
    code = "import sys\nsys.modules['entropy_rl.regularizers'] = None\n" + LOADED
    out = run_python(code, VERL_USE_EXTERNAL_PLUGINS="auto")
    assert "LOADED False" in out.stdout, out.stderr[-2000:]
    assert "entropy_rl.verl_plugin failed to load" in out.stderr


@pytest.fixture(scope="module")
def engine_results(tmp_path_factory) -> dict:
    """One process: every mode through a real FSDP2 training step, padding removal off and on (~1 min)."""
    tmp = tmp_path_factory.mktemp("verl_engine")
    out = tmp / "out.json"
    run = subprocess.run(
        [sys.executable, str(CHECK), str(out), str(tmp / "model")], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return {"results": json.loads(out.read_text()), "model": tmp / "model"}


def test_engine_step_matches_entropy_rl(engine_results):
    """The loss of verl's FSDP2 step with each mode equals entropy-rl's own loss on an HF forward of the same weights,
    the step filter leaves the same mask, and the N hook's values sit on the right tokens in both layouts."""
    modes = engine_results["results"]["modes"]
    assert len(modes) == 2 * (ENGINE_MODES + 1)
    for name, value in modes.items():
        if name.startswith("nec_layout"):
            assert value <= 1e-6, (name, value)
        else:
            assert abs(value["engine"] - value["entropy_rl"]) <= 1e-6 and value["same_mask"], (name, value)


def test_external_lib_where_plugins_are_disabled(engine_results):
    """verl_engine_check.py runs with VERL_USE_EXTERNAL_PLUGINS=none and loads the plugin as `model.external_lib` does,
    after verl's engine_workers bound ppo_loss: the modes appear and the bound name is rebound to the wrapper."""
    loaded = engine_results["results"]["external_lib"]
    assert loaded["registered_before"] == [] and loaded["ppo_loss_wrapped"]
    assert loaded["registered_after"] == sorted(verl_plugin.MODE_PREFIX + spec for spec in verl_plugin.MODES)


def test_step_filter_same_on_one_and_two_processes(engine_results):
    """Clip_B / Clip_V over the whole step batch: 2 gloo ranks remove the same tokens and give the same loss (the
    micro-batches, 2 rows each, are the same rows either way, so STEER's per-micro-batch statistics agree too)."""
    tmp = engine_results["model"].parent
    out = tmp / "out2.json"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run = subprocess.run(
        [*launch, str(CHECK), str(out), str(engine_results["model"]), "--filters"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    one, two = engine_results["results"]["filters"], json.loads(out.read_text())["filters"]
    for name in one:
        assert one[name]["removed"] > 0 and one[name]["mask"] == two[name]["mask"], name
        for result in (one[name], two[name]):  # the logged share, pooled over every rank
            assert result["removed_frac"] == pytest.approx(result["removed"] / result["before"]), (name, result)
        assert abs(one[name]["loss"] - two[name]["loss"]) <= 1e-6, (name, one[name]["loss"], two[name]["loss"])
