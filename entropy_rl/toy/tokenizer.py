"""Character-level tokenizer for the toy task, built locally (no Hub)."""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # ids 0..3, in this order
CHARACTERS = string.digits + "+-*=? " + string.ascii_lowercase + string.ascii_uppercase + ":\n.,"

# One user turn becomes "Q:<content>\nA:"; the assistant answer follows directly and ends with <eos>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'Q:' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'A:' + message['content'] + eos_token + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'A:' }}{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character (76 in all); no post-processor, so no <bos>/<eos> is ever added implicitly."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + list(CHARACTERS))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # tokenizers.Regex is Oniguruma, which rejects "(?s)."; [\s\S] also matches newlines.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",  # decoder-only generation continues from the right edge
        chat_template=CHAT_TEMPLATE,
        model_max_length=64,
    )
