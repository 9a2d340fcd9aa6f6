"""Sampling responses with transformers or vLLM, and the token entropy of each response.

Every sample draws from its own seeded generator (scoring.sample_seed), so a sample depends only on its seed, never
on batch composition or on how problems are sharded over processes. Entropies are those of the model's distribution
at the sampling temperature (T = 1 for greedy), measured while generating (transformers) or by one teacher-forced
pass over the sampled tokens (vLLM, whose logprobs are not the full distribution).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from entropy_rl.errors import ConfigError
from entropy_rl.evaluation.benchmarks import Benchmark, Sampling
from entropy_rl.evaluation.scoring import sample_seed

if TYPE_CHECKING:
    import torch
    from accelerate import PartialState
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def process_state() -> PartialState:
    """accelerate's process state (rank, device) of this evaluating process."""
    import torch
    from accelerate import PartialState

    # cpu=True on a machine without CUDA is what makes a multi-process launch set up gloo (MULTI_CPU); without it
    # accelerate 1.15 leaves every process alone, each evaluating everything.
    return PartialState(cpu=not torch.cuda.is_available())


def leave_process_group() -> None:
    """Under a launcher, every rank leaves the process group together at the end: a rank that exits alone can abort
    while the others' gloo threads still run ("terminate called without an active exception", exit -6)."""
    state = process_state()
    if state.num_processes > 1:
        state.wait_for_everyone()
        state.destroy_process_group()


def load_checkpoint_model(path: str | Path, device: torch.device | str, dtype: str = "auto") -> tuple[Any, Any]:
    """Model (safetensors weights only: a pickle checkpoint could run code) and tokenizer saved in `path`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype == "auto":
        on_gpu = torch.device(device).type == "cuda"
        dtype = "bfloat16" if on_gpu and torch.cuda.is_bf16_supported() else "float32"
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, dtype=getattr(torch, dtype))
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


def open_vllm(model_path: str, dtype: str, seed: int) -> Any:
    """A vLLM engine on `model_path`; ConfigError when vLLM or CUDA is missing or several processes were launched."""
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is None or not torch.cuda.is_available():
        raise ConfigError("--vllm needs the vllm package and a CUDA GPU; drop --vllm to generate with transformers")
    if process_state().num_processes > 1:
        raise ConfigError("--vllm runs in a single process (one vLLM engine); launch without accelerate")
    from vllm import LLM

    # Leave GPU memory for the transformers copy of the model that scores the entropies.
    return LLM(model=model_path, dtype=dtype, seed=seed, gpu_memory_utilization=0.6)


# ----------------------------------------------------------------------------------------------- transformers
def _token_entropy(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """Entropy (nats) of softmax(scores / T) over the last dimension; -inf scores (banned tokens) contribute 0."""
    import torch

    return torch.special.entr(torch.softmax(scores.float() / temperature, dim=-1)).sum(-1)


def _entropy_temperature(sampling: Sampling) -> float:
    return sampling.temperature if sampling.temperature > 0 else 1.0  # greedy: the model's own distribution


class _SampleAndMeasure:
    """Logits processor that generate() runs last: records each row's token entropy, then chooses the token.

    Sampling uses the Gumbel-max trick (argmax of log p + Gumbel noise draws from p) with one torch.Generator per
    row, so each sample depends only on its own seed, never on batch composition or sharding; generate() itself
    runs greedy and takes the argmax. Entropies are reduced to one float per row and step as they are produced:
    keeping the full-vocabulary scores (output_scores / output_logits) would hold steps x rows x vocab floats.
    """

    def __init__(self, sampling: Sampling, seeds: Sequence[int], device: torch.device) -> None:
        import torch

        self.sampling = sampling
        self.device = device
        self.entropies: list[torch.Tensor] = []
        self.generators = [torch.Generator(device).manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        temperature, top_p = self.sampling.temperature, self.sampling.top_p
        self.entropies.append(_token_entropy(scores, _entropy_temperature(self.sampling)))
        if temperature == 0:
            return scores
        logp = torch.log_softmax(scores.float() / temperature, dim=-1)
        if top_p < 1:
            sorted_logp, order = logp.sort(dim=-1, descending=True)
            # Drop a token when the tokens ranked above it already hold top_p of the mass (the first never is).
            drop = sorted_logp.exp().cumsum(-1) - sorted_logp.exp() > top_p
            logp = logp.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        uniform = torch.stack([torch.rand(logp.shape[-1], generator=g, device=self.device) for g in self.generators])
        return logp - torch.log(-torch.log(uniform.clamp_(min=torch.finfo(torch.float32).tiny)))


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    eos = model.generation_config.eos_token_id
    eos = tokenizer.eos_token_id if eos is None else eos
    return sorted({eos} if isinstance(eos, int) else set(eos))


def _completion_mask(completions: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """True on generated tokens up to and including the first end-of-sequence token (as TRL's completion mask)."""
    import torch

    is_eos = torch.isin(completions, torch.tensor(eos_ids, device=completions.device)).int()
    return (is_eos.cumsum(-1) - is_eos) == 0


def _render_prompt(tokenizer: PreTrainedTokenizerBase, benchmark: Benchmark, prompt: str) -> str:
    if benchmark.chat_template and tokenizer.chat_template:
        messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt


@dataclass(frozen=True)
class _Draws:
    """What to sample, whatever the backend: one completion per (prompt, seed) row."""

    prompts: list[str]
    seeds: list[int]
    sampling: Sampling
    max_new_tokens: int


def _generate_hf(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, draws: _Draws
) -> tuple[torch.Tensor, torch.Tensor]:
    """Completion token ids (rows x steps, padded after the end) and per-token entropies (same shape)."""
    import torch
    from transformers import GenerationConfig, LogitsProcessorList

    # No special tokens, left padding: prompts are tokenized exactly as TRL's GRPOTrainer does for training.
    inputs = tokenizer(draws.prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    inputs = inputs.to(model.device)
    sampler = _SampleAndMeasure(draws.sampling, draws.seeds, model.device)
    eos_ids = _eos_ids(model, tokenizer)
    # Neutral values set explicitly: generate() fills unset ones from the checkpoint's generation_config (which
    # may carry a repetition penalty or top-k), and this evaluation must measure the plain distribution.
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=draws.max_new_tokens,
        num_beams=1,
        temperature=1.0,
        top_k=None,
        top_p=1.0,
        repetition_penalty=1.0,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0],
        use_cache=True,  # training may have turned the KV cache off (gradient checkpointing)
    )
    output = model.generate(**inputs, generation_config=config, logits_processor=LogitsProcessorList([sampler]))
    completions = output[:, inputs["input_ids"].shape[1] :]
    # generate() may run a few steps past the end and then undo them, so keep as many entropies as tokens.
    entropies = torch.stack(sampler.entropies, dim=1)[:, : completions.shape[1]]
    return completions, entropies


def rescore_entropies(
    model: PreTrainedModel, prompt_ids: Sequence[int], completion_ids: Sequence[int], temperature: float
) -> list[float]:
    """Token entropies of a given completion by one teacher-forced forward pass (used for vLLM's samples)."""
    import torch

    ids = torch.tensor([list(prompt_ids) + list(completion_ids)], device=model.device)
    logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1]
    return _token_entropy(logits, temperature).tolist()


# ------------------------------------------------------------------------------------------------------- vLLM
def _generate_vllm(llm: Any, prompt_ids: list[list[int]], draws: _Draws) -> list[list[int]]:
    """Completion token ids from vLLM, one request per sample with that sample's seed (as the HF path)."""
    from vllm import SamplingParams

    sampling = draws.sampling
    params = [
        SamplingParams(
            temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=draws.max_new_tokens, seed=seed
        )
        for seed in draws.seeds
    ]
    # Token ids, not text: vLLM would otherwise add special tokens that the transformers path does not.
    requests = [{"prompt_token_ids": ids} for ids in prompt_ids]
    return [list(output.outputs[0].token_ids) for output in llm.generate(requests, params, use_tqdm=False)]


# ---------------------------------------------------------------------------------------------- per problem
def _sample_tokens(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, draws: _Draws, llm: Any
) -> tuple[list[list[int]], list[list[float]]]:
    """(completion token ids, their token entropies) per prompt, from transformers or, given `llm`, vLLM."""
    if llm is None:
        completions, entropies = _generate_hf(model, tokenizer, draws)
        mask = _completion_mask(completions, _eos_ids(model, tokenizer))
        token_lists = [row[keep].tolist() for row, keep in zip(completions, mask, strict=True)]
        entropy_lists = [row[keep].tolist() for row, keep in zip(entropies, mask, strict=True)]
        return token_lists, entropy_lists
    prompt_ids = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in draws.prompts]
    token_lists = _generate_vllm(llm, prompt_ids, draws)
    temperature = _entropy_temperature(draws.sampling)
    entropy_lists = [
        rescore_entropies(model, ids, tokens, temperature) for ids, tokens in zip(prompt_ids, token_lists, strict=True)
    ]
    return token_lists, entropy_lists


def generate_records(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    benchmark: Benchmark,
    batch: list[dict[str, str]],
    *,
    sampling: Sampling,
    seed: int,
    max_new_tokens: int,
    llm: Any = None,
) -> list[dict[str, Any]]:
    """Generate `sampling.k` samples for each problem of `batch`; one record per problem, not graded yet."""
    rows = [(problem, j) for problem in batch for j in range(sampling.k)]
    prompts = [_render_prompt(tokenizer, benchmark, problem["prompt"]) for problem, _ in rows]
    seeds = [sample_seed(seed, benchmark.name, problem["id"], j) for problem, j in rows]
    draws = _Draws(prompts, seeds, sampling, max_new_tokens)
    token_lists, entropy_lists = _sample_tokens(model, tokenizer, draws, llm)
    records: dict[str, dict[str, Any]] = {}
    for (problem, _), tokens, token_entropies in zip(rows, token_lists, entropy_lists, strict=True):
        if problem["id"] not in records:
            fields = {key: problem[key] for key in ("id", "prompt", "gold")}
            records[problem["id"]] = {**fields, "samples": [], "num_tokens": [], "entropy": []}
        record = records[problem["id"]]
        record["samples"].append(tokenizer.decode(tokens, skip_special_tokens=True))
        record["num_tokens"].append(len(tokens))
        record["entropy"].append(sum(token_entropies) / max(1, len(token_entropies)))
    return list(records.values())
