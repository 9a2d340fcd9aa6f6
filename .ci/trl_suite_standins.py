"""Offline stand-ins for the Hub repositories TRL's tests/test_grpo_trainer.py loads (used by .ci/trl_suite).

Models are random tiny checkpoints built from a config, with a byte-level tokenizer carrying the family's chat template
from TRL's own `trl/chat_templates/` (TRL recognises templates by their text, e.g. for tool-call parsing). They are
written as a Hugging Face Hub cache (`models--org--name/snapshots/...`), so `from_pretrained("org/name")` finds them
with `HF_HUB_OFFLINE=1` and no code is patched. Datasets are local folders with TRL's "zen" configs (same columns and
splits, a README declaring the configs) that the pytest plugin substitutes for the Hub names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import trl
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GenerationConfig,
    PreTrainedTokenizerFast,
)

TEMPLATES = Path(trl.__file__).parent / "chat_templates"
REVISION = "0" * 40  # the snapshot's commit hash; refs/main points at it

# Hub id -> (model_type, head, chat template in trl/chat_templates, eos, pad, extra config)
_MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16}
MODELS = {
    "trl-internal-testing/tiny-Qwen2ForCausalLM-2.5": ("qwen2", "causal", "qwen2_5", "<|im_end|>", "<|endoftext|>", {}),
    "trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5": (
        "qwen2",
        "seq",
        "qwen2_5",
        "<|im_end|>",
        "<|endoftext|>",
        {},
    ),
    "trl-internal-testing/tiny-Qwen3ForCausalLM": ("qwen3", "causal", "qwen3", "<|im_end|>", "<|endoftext|>", {}),
    "trl-internal-testing/tiny-Qwen3ForSequenceClassification": (
        "qwen3",
        "seq",
        "qwen3",
        "<|im_end|>",
        "<|endoftext|>",
        {},
    ),
    "trl-internal-testing/tiny-Qwen3MoeForCausalLM": (
        "qwen3_moe",
        "causal",
        "qwen3",
        "<|im_end|>",
        "<|endoftext|>",
        {**_MOE, "decoder_sparse_step": 1},
    ),
    "trl-internal-testing/tiny-LlamaForCausalLM-3.2": (
        "llama",
        "causal",
        "llama3_2",
        "<|eot_id|>",
        "<|finetune_right_pad_id|>",
        {},
    ),
    "trl-internal-testing/tiny-LlamaForSequenceClassification-3.2": (
        "llama",
        "seq",
        "llama3_2",
        "<|eot_id|>",
        "<|finetune_right_pad_id|>",
        {},
    ),
    "trl-internal-testing/tiny-MistralForCausalLM-0.2": ("mistral", "causal", None, "</s>", "</s>", {}),
    "trl-internal-testing/tiny-Gemma2ForCausalLM": ("gemma2", "causal", "gemma", "<end_of_turn>", "<pad>", {}),
    "trl-internal-testing/tiny-Cohere2ForCausalLM": (
        "cohere2",
        "causal",
        "cohere2",
        "<|END_OF_TURN_TOKEN|>",
        "<PAD>",
        {},
    ),
    "trl-internal-testing/tiny-Glm4MoeForCausalLM": (
        "glm4_moe",
        "causal",
        "glm4moe",
        "<|user|>",
        "<|endoftext|>",
        {
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 16,
            "first_k_dense_replace": 1,
            "n_shared_experts": 1,
            "n_group": 1,
            "topk_group": 1,
        },
    ),
    "trl-internal-testing/tiny-GptOssForCausalLM": (
        "gpt_oss",
        "causal",
        "gptoss",
        "<|return|>",
        "<|endoftext|>",
        {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 128},
    ),
}

# A Mistral-0.2-style template (TRL ships none for Mistral).
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
# Markers a template writes literally that a real tokenizer holds as single tokens.
_SPECIAL = re.compile(r"<\|[A-Za-z0-9_]+\|>|</?[a-z_]+>|\[/?INST\]")
_ALWAYS = ["<|endoftext|>", "<s>", "</s>", "<bos>", "<pad>", "<PAD>", "<unk>"]

# Hub dataset id -> config -> columns of one row, rows formatted by index
ZEN_PROMPTS = [
    "The sun",
    "Beautiful is better than",
    "Explicit is",
    "Simple is better",
    "Complex is",
    "Flat is better than",
    "Sparse is better",
    "Readability",
    "Special cases aren't",
    "Although practicality",
    "Errors should",
    "Unless explicitly",
    "In the face of ambiguity",
    "There should be one",
    "Although that way",
    "Now is better",
    "Although never is",
]


def build_tokenizer(template: str | None, eos: str, pad: str) -> PreTrainedTokenizerFast:
    """Byte-level BPE without merges (every string encodes) plus the template's markers as single tokens."""
    text = MISTRAL_TEMPLATE if template is None else (TEMPLATES / f"{template}.jinja").read_text()
    specials = list(dict.fromkeys([*_ALWAYS, eos, pad, *_SPECIAL.findall(text)]))
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    bos = "<|begin_of_text|>" if "<|begin_of_text|>" in specials else ("<bos>" if template == "gemma" else "<s>")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=eos, pad_token=pad, bos_token=bos, unk_token=None, chat_template=text
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in specials if t not in (eos, pad, bos)]})
    return tokenizer


def build_model(model_type: str, head: str, tokenizer, extra: dict):
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=4,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **({"num_labels": 1} if head == "seq" else {}),
        **extra,
    )
    torch.manual_seed(0)
    auto = AutoModelForSequenceClassification if head == "seq" else AutoModelForCausalLM
    model = auto.from_config(config, dtype=torch.float32)
    if head == "causal":
        model.generation_config = GenerationConfig(
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
    return model


def write_models(hub_cache: Path) -> dict[str, str]:
    """Every model of MODELS in a Hub cache layout; returns {hub id: error} for those that could not be built."""
    failed = {}
    for repo_id, (model_type, head, template, eos, pad, extra) in MODELS.items():
        snapshot = hub_cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / REVISION
        try:
            tokenizer = build_tokenizer(template, eos, pad)
            model = build_model(model_type, head, tokenizer, extra)
            model.save_pretrained(snapshot)
            tokenizer.save_pretrained(snapshot)
        except Exception as error:  # a family this transformers cannot build stays unavailable, as reported
            failed[repo_id] = f"{type(error).__name__}: {error}"
            continue
        (snapshot.parent.parent / "refs").mkdir(exist_ok=True)
        (snapshot.parent.parent / "refs" / "main").write_text(REVISION)
    return failed


def write_datasets(root: Path) -> dict[str, str]:
    """TRL's "zen" dataset, prompt-only configs (standard and conversational), train (17 rows) and test (3 rows)."""
    rows = {
        "standard_prompt_only": lambda p: {"prompt": p},
        "conversational_prompt_only": lambda p: {"prompt": [{"role": "user", "content": f"What is better? {p}"}]},
    }
    folder = root / "trl-internal-testing--zen"
    for config, row in rows.items():
        for split, prompts in (("train", ZEN_PROMPTS), ("test", ZEN_PROMPTS[:3])):
            Dataset.from_list([row(p) for p in prompts]).to_parquet(folder / config / f"{split}.parquet")
    card = ["---", "configs:"]
    for config in rows:
        card += [f"- config_name: {config}", "  data_files:"]
        card += [f"  - split: {split}\n    path: {config}/{split}.parquet" for split in ("train", "test")]
    (folder / "README.md").write_text("\n".join([*card, "---", ""]))
    return {"trl-internal-testing/zen": str(folder)}


def main(root: str) -> None:
    root_path = Path(root)
    failed = write_models(root_path / "hub")
    datasets = write_datasets(root_path / "datasets")
    (root_path / "standins.json").write_text(
        json.dumps({"models": sorted(set(MODELS) - set(failed)), "unbuilt": failed, "datasets": datasets}, indent=1)
    )


if __name__ == "__main__":
    import sys

    main(sys.argv[1])
