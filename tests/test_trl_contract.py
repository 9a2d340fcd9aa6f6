"""Fails loudly when a TRL upgrade changes what EntropyGRPOTrainer hooks. Read the failure, then re-check the hook."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import trl
from trl import GRPOTrainer
from trl.kernels import chunked_logprob
from trl.trainer import utils as trl_utils

from entropy_rl import onepass


def test_trl_is_the_pinned_version():
    assert version("trl") == "1.16.0", "entropy-rl hooks TRL 1.16.0 internals; re-run this file's checks before bumping"


def parameters(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_hooked_method_signatures():
    assert parameters(GRPOTrainer._compute_loss) == ["self", "model", "inputs"]
    assert parameters(GRPOTrainer._get_per_token_logps_and_entropies)[:7] == [
        "self",
        "model",
        "input_ids",
        "attention_mask",
        "logits_to_keep",
        "batch_size",
        "compute_entropy",
    ]
    assert parameters(GRPOTrainer.get_high_entropy_mask) == ["self", "entropies", "mask", "threshold"]
    assert parameters(GRPOTrainer._generate_and_score_completions) == ["self", "inputs"]
    # Checkpoint hooks (regularizer state is saved and restored beside TRL's entropy controller state)
    assert parameters(GRPOTrainer._save_checkpoint) == ["self", "model", "trial"]
    assert parameters(GRPOTrainer._load_optimizer_and_scheduler) == ["self", "checkpoint"]
    assert parameters(GRPOTrainer._load_from_checkpoint) == ["self", "resume_from_checkpoint", "model"]
    assert parameters(GRPOTrainer._load_rng_state) == ["self", "checkpoint"]
    assert parameters(GRPOTrainer._get_output_dir) == ["self", "trial"]
    assert parameters(GRPOTrainer.train)[:2] == ["self", "resume_from_checkpoint"]
    # Unscorable completions are counted from the gathered rewards (NaN where a function returned None)
    assert parameters(GRPOTrainer._calculate_rewards) == [
        "self",
        "inputs",
        "prompts",
        "completions",
        "completion_ids_list",
    ]


def test_trainer_end_is_all_in_ours_where_transformers_has_one():
    # EntropyGRPOTrainer.end does what Trainer.end does (absent before transformers 5.18), then lets the DDP wrapper go.
    from transformers import Trainer

    if hasattr(Trainer, "end"):
        assert parameters(Trainer.end) == ["self"]
        assert set(Trainer.end.__code__.co_names) == {"accelerator", "end_training"}, "Trainer.end does more now"


def test_checkpoint_files_are_written_under_get_output_dir():
    """The atomic save redirects _get_output_dir to the staging folder: every file of a checkpoint must be written
    below it, and rotation inside _save_checkpoint then only sees the staging folder (ours runs after the rename)."""
    from transformers import Trainer

    source = inspect.getsource(Trainer._save_checkpoint)
    assert "run_dir = self._get_output_dir(trial=trial)" in source
    assert "output_dir = os.path.join(run_dir, checkpoint_folder)" in source
    assert "output_dir=run_dir" in source  # rotate_checkpoints(output_dir=run_dir, ...) (4.x: a Trainer method)
    after_super = inspect.getsource(GRPOTrainer._save_checkpoint).split("super()._save_checkpoint")[1]
    assert "self._get_output_dir(trial=trial)" in after_super and "self.args.output_dir" not in after_super


def test_compute_loss_calls_logps_once_with_entropy_and_reads_the_documented_inputs():
    source = inspect.getsource(GRPOTrainer._compute_loss)
    assert source.count("self._get_per_token_logps_and_entropies(") == 1
    assert "compute_entropy=True" in source
    for key in ('"advantages"', '"completion_mask"', '"completion_ids"', '"old_per_token_logps"', '"tool_mask"'):
        assert key in source, key
    # Edits made inside the logps call must come before TRL reads the advantages and the old log-probs.
    call = source.index("self._get_per_token_logps_and_entropies(")
    assert source.index('advantages = inputs["advantages"]') > call
    assert source.index('inputs.get("old_per_token_logps")') > call
    assert source.index('inputs["num_items_in_batch"]') > call  # filters taken at loss time recount it
    # The loss-time mask is completion_mask * tool_mask: the diagnostics rebuild it the same way.
    assert 'completion_mask * inputs["tool_mask"]' in source


def test_generation_output_keys_the_step_level_edits_extend():
    source = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    for key in ('"completion_mask"', '"num_items_in_batch"', '"tool_mask"'):
        assert key in source, key


def test_dynamic_sampling_hooks():
    # The rewards of every process come back from _calculate_rewards, before any normalisation.
    assert parameters(GRPOTrainer._calculate_rewards) == [
        "self",
        "inputs",
        "prompts",
        "completions",
        "completion_ids_list",
    ]
    source = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    assert "rewards_per_func = self._calculate_rewards(inputs, prompts, completions, completion_ids_list)" in source
    assert "rewards.view(-1, num_generations)" in source  # groups are consecutive global rows
    assert "self.accelerator.process_index * len(prompts)" in source  # each process holds consecutive rows
    # Every key of TRL's text rollout dict is one dynamic sampling knows how to cut and join.
    from entropy_rl import dynamic_sampling

    known = {*dynamic_sampling.PROMPT_KEYS, *dynamic_sampling.ROW_KEYS, *dynamic_sampling.RECOUNTED_KEYS}
    text_keys = {"prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages", "num_items_in_batch"}
    optional = {"old_per_token_logps", "importance_sampling_ratio", "sampling_per_token_logps", "ref_per_token_logps"}
    for key in text_keys | optional | {"tool_mask"}:
        assert f'output["{key}"]' in source or f'"{key}": {key}' in source, key
    assert text_keys | optional | {"tool_mask"} <= known


def test_logps_method_returns_logps_entropies_then_the_rest():
    source = inspect.getsource(GRPOTrainer._get_per_token_logps_and_entropies)
    assert "return logps, entropies, aux_loss" in source
    assert "outputs.log_probs[:, -logits_to_keep:]" in source


def test_grpo_scores_tokens_through_the_fused_head_we_extend():
    # The one pass (entropy_rl.onepass) extends the function GRPO's fused head calls; it supports what GRPO asks for.
    source = inspect.getsource(GRPOTrainer.__init__)
    assert 'outputs=("log_probs", "entropy")' in source
    assert set(("log_probs", "entropy")) <= onepass.SUPPORTED_OUTPUTS
    assert trl_utils._ChunkedLogProbFunction is chunked_logprob.ChunkedLogProbFunction
    # The fused forward looks the function up as a module global at call time, so `onepass.capture` can swap it.
    head = inspect.getsource(trl_utils.add_fused_lm_head)
    assert "per_token = _ChunkedLogProbFunction.apply(" in head
    assert "_ChunkedLogProbFunction" in trl_utils.__dict__


def test_fused_head_row_layout_we_rebuild():
    # onepass.per_position places the captured rows exactly as the fused head places its log-probs.
    head = inspect.getsource(trl_utils.add_fused_lm_head)
    for line in (
        "labels = labels[:, 1:]",
        "mask = labels != -100",
        "compact = _use_triton(hidden_states.device)",
        "hidden_states[mask] if compact else hidden_states.reshape(-1, hidden_states.size(-1))",
        "x.new_zeros(mask.shape).masked_scatter(mask, x)",
        "x.view(mask.shape).masked_fill(~mask, 0)",
    ):
        assert line in head, line
    logps = inspect.getsource(GRPOTrainer._get_per_token_logps_and_entropies)
    for line in (
        "for start in range(0, input_ids.size(0), batch_size):",
        "batch_size = batch_size or input_ids.size(0)",
        "labels = input_ids_batch.masked_fill(attention_mask_batch == 0, -100)",
        "labels[:, :-logits_to_keep] = -100",
        "outputs = model(**model_inputs, labels=labels, fused_lm_head=True)",
    ):
        assert line in logps, line
    assert inspect.getsource(onepass.label_mask).count("-100") == 3


def test_chunked_logprob_internals_the_one_pass_reuses():
    fn = chunked_logprob.ChunkedLogProbFunction
    assert parameters(fn.forward) == parameters(onepass.OnePassLogProbFunction.forward)
    forward = inspect.getsource(fn.forward)
    # Same tiles and dtypes, and the saved state TRL's inherited backward reads.
    for line in (
        "mm_buf = torch.empty((min(N, TOKEN_CHUNK_SIZE), chunk_size), device=device, dtype=compute_dtype)",
        "torch.mm(hidden_chunk, weight[start:end].to(compute_dtype).t(), out=tile)",
        "log_z = running_max + torch.log(sum_exp)",
        "logprobs = target_logit - log_z",
        "entropy = log_z - x_sum_exp / sum_exp",
        "ctx.save_for_backward(hidden, weight, bias, targets, log_z, log_z if entropy is None else entropy)",
    ):
        assert line in forward, line
    backward = inspect.getsource(fn.backward)
    for attr in ("ctx.compute_dtype", "ctx.chunk_size", "ctx.kernel_args", "ctx.saved_tensors"):
        assert attr in backward, attr
    # The torch and Triton folds whose sums VocabSums / triton_fold reproduce with TRL's expressions.
    tile = inspect.getsource(chunked_logprob._forward_tile)
    for line in (
        "rescale = torch.exp(running_max - new_m)",
        "e = torch.exp(z - new_m.unsqueeze(-1))",
        "sum_exp.mul_(rescale).add_(e.sum(-1))",
        "x_sum_exp.mul_(rescale).add_((e * z).sum(-1))",
        "sq_sum_exp.mul_(rescale * rescale).add_((e * e).sum(-1))",
    ):
        assert line in tile, line
    kernel_fn = chunked_logprob._forward_kernel
    kernel = inspect.getsource(getattr(kernel_fn, "fn", kernel_fn))  # `.fn`: the Python function under triton.jit
    for line in (
        "e = tl.where(mask, tl.exp(z - new_m), 0.0)",
        "s = s * rescale + tl.sum(e, axis=0)",
        "xs = xs * rescale + tl.sum(e * tl.where(mask, z, 0.0), axis=0)",
        "sq = sq * rescale * rescale + tl.sum(e * e, axis=0)",
    ):
        assert line in kernel, line
    assert list(inspect.signature(chunked_logprob._torch_transform).parameters) == [
        "z",
        "logit_scale",
        "softcap",
        "inv_t",
        "HAS_SOFTCAP",
    ]


def test_metrics_store_and_step_callback_contract():
    source = inspect.getsource(GRPOTrainer.log)
    assert "self._metrics[mode].items()" in source and "self._metrics[mode].clear()" in source
    assert hasattr(trl, "GRPOConfig") and "entropy_coef" in trl.GRPOConfig.__dataclass_fields__


def test_clip_then_pre_optimizer_callback_then_step():
    """The parameter-space prediction (entropy_rl/param_prediction.py) reads the clipped gradient and the optimizer
    state in on_pre_optimizer_step, and the clip factor from `_clip_grad_norm`'s return value (the pre-clip norm)."""
    from transformers import Trainer

    if not hasattr(Trainer, "_clip_grad_norm"):  # transformers 4.x: inline, through the accelerator's method
        source = inspect.getsource(Trainer._inner_training_loop)
        clip = source.index("_grad_norm = self.accelerator.clip_grad_norm_(")
    else:
        assert parameters(Trainer._clip_grad_norm) == ["self", "model"]
        assert "Returns the pre-clip gradient norm" in inspect.getsource(Trainer._clip_grad_norm)
        source = inspect.getsource(Trainer._run_epoch)
        clip = source.index("self._clip_grad_norm(model)")
    callback = source.index("on_pre_optimizer_step")
    step = source.index("self.optimizer.step()")
    assert clip < callback < step
