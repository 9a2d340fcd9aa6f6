"""Built-in CPU default: a tiny character-level Llama and a two-operand addition task (see docs/toy.md)."""

from entropy_rl.toy.hard import make_hard_problems
from entropy_rl.toy.model import POLICY_DIR, accuracy, build_model, load_toy
from entropy_rl.toy.task import arithmetic_reward, make_problems
from entropy_rl.toy.tokenizer import build_tokenizer
from entropy_rl.toy.warmup import warm_start

__all__ = [
    "POLICY_DIR",
    "accuracy",
    "arithmetic_reward",
    "build_model",
    "build_tokenizer",
    "load_toy",
    "make_hard_problems",
    "make_problems",
    "warm_start",
]
