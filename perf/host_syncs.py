"""Host-device synchronisations per optimizer step made by entropy-rl's own code, for every method.

    python perf/host_syncs.py [--methods none,clip_cov,...] [--steps 3] [--output syncs.json]

Each method (`none` = the diagnostics alone; every other name from the regularizer registry) trains the benchmark's
random model (perf/overhead.py) for a few steps of two micro-batches each, and every synchronisation is recorded with
the optimizer step it happened in and the code that asked for it. On CUDA, torch.cuda.set_sync_debug_mode("warn")
reports every synchronisation; on the CPU, where nothing waits, the points that would wait on a device are recorded:
host reads of a tensor's value (item, tolist, bool, int, float) and operations whose output size depends on the data
(nonzero, masked_select, boolean-mask indexing and assignment, unique, repeat_interleave without a size). A point
belongs to the innermost Python frame outside torch, the standard library and perf/: entropy_rl's count, TRL's and the
other libraries' are reported apart (they are theirs).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import sysconfig
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import TrainerCallback

import entropy_rl

aten = torch.ops.aten
PACKAGE_DIR = str(Path(entropy_rl.__file__).parent)
TORCH_DIR, STDLIB = str(Path(torch.__file__).parent), sysconfig.get_paths()["stdlib"]
PERF_DIR = str(Path(__file__).resolve().parent)
# Operations that wait for the device: a value read on the host, or an output whose size depends on the data.
HOST_READS = {aten._local_scalar_dense.default}
DATA_SIZED = {
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.repeat_interleave.Tensor,
}
INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
# A method's TRL settings: KL-Cov does nothing on-policy.
METHOD_OVERRIDES = {"kl_cov": {"num_iterations": 2}}


def library(path: str) -> str | None:
    """Who a frame's file belongs to: entropy_rl, a library (trl, transformers, accelerate, ...) or None for the
    frames that only pass a call on (torch, the standard library outside site-packages, the scripts in perf/)."""
    if path.startswith(("<", TORCH_DIR, PERF_DIR)):
        return None
    if path.startswith(PACKAGE_DIR):
        return "entropy_rl"
    parts = Path(path).parts
    if path.startswith(STDLIB) and "site-packages" not in parts:
        return None
    return next((p for p in ("trl", "transformers", "accelerate") if p in parts), Path(path).name)


_LIBRARY: dict[str, str | None] = {}  # file -> library(file): every operation walks the stack, so it is cached


def owner() -> tuple[str, str]:
    """(library, 'file:line') of the innermost frame that is not torch, the stdlib or perf/."""
    frame = sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename
        who = _LIBRARY[path] if path in _LIBRARY else _LIBRARY.setdefault(path, library(path))
        if who is not None:
            return who, f"{Path(path).name}:{frame.f_lineno}"
        frame = frame.f_back
    return "unknown", "?"


@dataclass
class Syncs:
    """Every synchronisation seen: (step, owner, where, what)."""

    step: int = 0
    events: list[tuple[int, str, str, str]] = field(default_factory=list)

    def record(self, what: str) -> None:
        self.events.append((self.step, *owner(), what))

    def per_step(self, who: str = "entropy_rl") -> dict[int, int]:
        counts = collections.Counter(step for step, by, _, _ in self.events if by == who)
        return {step: counts.get(step, 0) for step in range(1, self.step + 1)}

    def sites(self, who: str = "entropy_rl") -> dict[str, int]:
        return dict(collections.Counter(f"{where} {what}" for _, by, where, what in self.events if by == who))


class CpuSyncPoints(TorchDispatchMode):
    """Records the operations that would synchronise a device (see the module docstring)."""

    def __init__(self, syncs: Syncs):
        super().__init__()
        self.syncs = syncs

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS or func in DATA_SIZED:
            self.syncs.record(func.__name__)
        elif func in INDEXING and any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1] if i is not None
        ):
            self.syncs.record(f"{func.__name__} with a boolean mask")
        return func(*args, **(kwargs or {}))


class watch:
    """Context manager recording synchronisations into `syncs`: CUDA's sync debug mode on a GPU; on the CPU the
    dispatch-level sync points and `Tensor.tolist` (which dispatches no operation)."""

    def __init__(self, syncs: Syncs, cuda: bool):
        self.syncs, self.cuda = syncs, cuda

    def __enter__(self) -> Syncs:
        syncs = self.syncs
        if self.cuda:
            self._warnings = warnings.catch_warnings()
            self._warnings.__enter__()
            warnings.simplefilter("always")
            self._show = warnings.showwarning

            def show(message, category, *rest):
                if "synchronizing" in str(message):
                    syncs.record("CUDA synchronisation")
                else:
                    self._show(message, category, *rest)

            warnings.showwarning = show
            torch.cuda.set_sync_debug_mode("warn")
        else:
            self._tolist = real = torch.Tensor.tolist

            def tolist(tensor):
                syncs.record("tolist")
                return real(tensor)

            torch.Tensor.tolist = tolist
            self._mode = CpuSyncPoints(self.syncs)
            self._mode.__enter__()
        return self.syncs

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.set_sync_debug_mode(0)
            warnings.showwarning = self._show
            self._warnings.__exit__(*exc)
        else:
            self._mode.__exit__(*exc)
            torch.Tensor.tolist = self._tolist


class StepCounter(TrainerCallback):
    """Files each synchronisation under the optimizer step being taken (the step-end work belongs to its step)."""

    def __init__(self, syncs: Syncs):
        self.syncs = syncs

    def on_step_begin(self, args, state, control, **kwargs):
        self.syncs.step = state.global_step + 1


def methods() -> list[str]:
    from entropy_rl.regularizers import REGISTRY

    return ["none", *sorted(REGISTRY)]


def count(method: str, steps: int, vocab: int = 64, hidden: int = 32, device: str | None = None) -> Syncs:
    """Train `method` for `steps` optimizer steps (2 micro-batches each) and record its synchronisations."""
    from datasets import Dataset
    from overhead import build_model, build_tokenizer, spread_reward
    from transformers import PrinterCallback

    from entropy_rl.config import EntropyGRPOConfig
    from entropy_rl.trainer import EntropyGRPOTrainer

    cuda = device != "cpu" and torch.cuda.is_available()
    dataset = Dataset.from_list([{"prompt": f"{a}+{b}="} for a in range(10) for b in range(10)])
    with tempfile.TemporaryDirectory() as out:
        config = EntropyGRPOConfig(
            output_dir=out,
            regularizer=method,
            dynamics_every=0,
            max_steps=steps,
            learning_rate=1e-3,
            per_device_train_batch_size=8,
            gradient_accumulation_steps=2,
            num_generations=8,
            max_completion_length=6,
            beta=0.0,
            bf16=cuda,
            use_cpu=not cuda,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            seed=0,
            disable_tqdm=True,
            **METHOD_OVERRIDES.get(method, {}),
        )
        trainer = EntropyGRPOTrainer(
            model=build_model(vocab, hidden, 1),
            reward_funcs=spread_reward,
            args=config,
            train_dataset=dataset,
            processing_class=build_tokenizer(vocab),
        )
        trainer.remove_callback(PrinterCallback)
        syncs = Syncs()
        trainer.add_callback(StepCounter(syncs))
        with watch(syncs, cuda):
            trainer.train()
    return syncs


def report(names: list[str], steps: int, device: str | None = None) -> dict[str, Any]:
    results = {}
    for name in names:
        syncs = count(name, steps, device=device)
        per_step = syncs.per_step()
        others = sorted({event[1] for event in syncs.events} - {"entropy_rl"})
        results[name] = {
            "entropy_rl_per_step": per_step,
            "max_per_step": max(per_step.values(), default=0),
            "entropy_rl_sites": syncs.sites(),
            "other_per_step": {who: syncs.per_step(who) for who in others},
        }
        print(f"{name:22s} entropy_rl syncs per step {list(per_step.values())}  at {syncs.sites()}")
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| method | entropy-rl syncs per optimizer step | where (all counted steps together) |",
        "| --- | ---: | --- |",
    ]
    for name, r in results.items():
        sites = ", ".join(f"`{site}` ×{n}" for site, n in sorted(r["entropy_rl_sites"].items()))
        lines.append(f"| {name} | {r['max_per_step']} | {sites} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(methods()), help="comma-separated; default: every method")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: CUDA when available")
    parser.add_argument("--output", type=Path, help="write the counts as JSON")
    parser.add_argument("--markdown", type=Path, help="write the table as markdown")
    args = parser.parse_args(argv)
    results = report(args.methods.split(","), args.steps, args.device)
    print(markdown(results))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))
    if args.markdown:
        args.markdown.write_text(markdown(results))
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
