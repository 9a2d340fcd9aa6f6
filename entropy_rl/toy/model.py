"""Tiny Llama policy for the toy task: build, reload and measure accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from entropy_rl.toy.task import arithmetic_reward

# The default warm-up's result, shipped with the package (warmup.json beside it records how it was made).
POLICY_DIR = Path(__file__).with_name("policy")


def build_model(
    tokenizer: PreTrainedTokenizerBase, hidden_size: int = 128, num_layers: int = 3, seed: int = 0
) -> LlamaForCausalLM:
    """Random-init float32 Llama (~0.8M parameters at the defaults).

    Llama rather than Qwen2: AutoTokenizer forces Qwen2Tokenizer on `qwen2` checkpoints, breaking the char tokenizer.
    """
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=max(1, hidden_size // 32),
        num_key_value_heads=max(1, hidden_size // 32),
        max_position_embeddings=64,  # prompt <= 7 chars + completion <= 16 tokens
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dtype="float32",
    )
    # Seed a forked RNG so building a model leaves the caller's random state alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    return model


def load_toy(path: str | Path = POLICY_DIR) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Reload a saved toy model and tokenizer (safetensors only, float32); by default the shipped warm-started one."""
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


@torch.no_grad()
def accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[dict[str, str]],
    *,
    greedy: bool,
    max_new_tokens: int = 8,
    batch_size: int = 256,
    seed: int = 0,
) -> float:
    """Fraction of `problems` answered exactly, decoding greedily or sampling at temperature 1 (no top-k/top-p).

    Sampling matches TRL's GRPO defaults (top_k=0, top_p=1) and uses a forked RNG seeded with `seed`.
    """
    if not problems:
        raise ValueError("accuracy() needs at least one problem")
    sampling = {} if greedy else {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
    was_training = model.training
    model.eval()
    correct = 0.0
    # Fork the RNG of the device that samples, so the caller's random state is left alone.
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for start in range(0, len(problems), batch_size):
                batch = problems[start : start + batch_size]
                inputs = tokenizer(
                    [p["prompt"] for p in batch], return_tensors="pt", padding=True, padding_side="left"
                ).to(model.device)
                output = model.generate(
                    **inputs,
                    do_sample=not greedy,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **sampling,
                )
                new_tokens = output[:, inputs["input_ids"].shape[1] :]
                completions = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                correct += sum(arithmetic_reward(None, completions, [p["answer"] for p in batch]))
    finally:
        model.train(was_training)
    return correct / len(problems)
