"""The work entropy-rl adds to a GRPO step, counted operation by operation, and the step's peak memory.

    python perf/added_work.py --vocab 32768 --length 256 --output docs/performance/added-work-32k.json \
        --markdown docs/performance/added-work-32k.md
    python perf/added_work.py --curves --vocab 4096,16384,65536 --hidden 32,64,128 --length 32,128,512 --batch 2 \
        --output docs/performance/cost-curves.json      # growth with size, and its figure
    python perf/added_work.py --plot docs/performance/cost-curves.json                  # its figure (PNG beside it)

Each configuration of perf/overhead.py trains the benchmark's random model (one prompt's group per step) for two
steps (two rollout cycles off-policy): the first is measured for its peak memory, the second runs under an
operation timer: every aten operation dispatched on the training thread is timed by the thread's CPU clock (one
torch thread, so it is the operation's own work, whatever else the machine runs) and filed under the code that
called it, the innermost Python frame outside torch (perf/host_syncs.py's rule): entropy_rl, trl, transformers, ...
KL-Cov trains off-policy (num_iterations=2) and is compared with plain TRL under the same setting.
The added work is the entropy_rl share, reported as a fraction of the rest of the step's operations. Where the one
pass (entropy_rl.onepass) replaces TRL's chunked log-prob forward, the TRL operations it took over are measured too
(the same step of plain TRL), so the net addition is entropy_rl's time minus what left TRL's column.
Gradients of entropy-rl's own [B, T] loss terms are computed inside TRL's backward call and counted there.

Memory: the step's peak above its start (CPU: peak resident set size; CUDA: max_memory_allocated), and the
largest tensor an entropy_rl operation created (no [tokens x vocabulary] tensor should appear there).

`--curves` sweeps tokens per step, vocabulary and hidden size (one at a time, around a middle point) for plain TRL
and the diagnostics; `--plot` draws the cost curves from that JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from argparse import Namespace
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from host_syncs import owner
from overhead import CONFIGS, build_tokenizer, build_trainer
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import PrinterCallback, TrainerCallback

ONE_PASS = {"diagnostics", "clip_v"}  # configurations whose step runs the one pass instead of TRL's forward
TRL_HEAD = "chunked_logprob.py"  # TRL's chunked log-prob function, which the one pass takes over
KEYS = ("vocab", "hidden", "length", "batch", "off_policy")  # rows with the same values are the same step shape


class OpTimer(TorchDispatchMode):
    """Thread CPU time and output size of every dispatched operation, by owner and by call site."""

    def __init__(self) -> None:
        super().__init__()
        self.ns: collections.Counter[str] = collections.Counter()  # owner -> ns
        self.sites: collections.Counter[str] = collections.Counter()  # "owner file:line op" -> ns
        self.largest: dict[str, tuple[int, str]] = {}  # owner -> (bytes, site) of its largest output

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.thread_time_ns()
        out = func(*args, **(kwargs or {}))
        spent = time.thread_time_ns() - start
        who, where = owner()
        self.ns[who] += spent
        self.sites[f"{who} {where} {func.__name__}"] += spent
        size = sum(t.numel() * t.element_size() for t in _tensors(out))
        if size > self.largest.get(who, (0, ""))[0]:
            self.largest[who] = (size, f"{where} {func.__name__}")
        return out


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for t in out if isinstance(t, torch.Tensor)]
    return []


def status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS: resident now, VmHWM: its peak since the last reset)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))


class Phases(TrainerCallback):
    """`cycle` steps measured for peak memory, then `cycle` steps under the operation timer. CPU memory: the peak
    resident set size above the steps' start (Linux resets the peak through /proc/self/clear_refs; tensors of a
    tile's size are mapped and unmapped whole, so they show there as they live); CUDA: max_memory_allocated."""

    def __init__(self, cycle: int, cuda: bool):
        self.cycle, self.cuda = cycle, cuda
        self.timer = OpTimer()
        self.peak = 0

    def phase(self, step: int) -> str:
        return ("memory", "timing")[min((step - 1) // self.cycle, 1)]

    def on_step_begin(self, args, state, control, **kwargs):
        step = state.global_step + 1
        if (step - 1) % self.cycle:
            return
        if self.phase(step) == "memory":
            if self.cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                self._base = torch.cuda.memory_allocated()
            else:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current resident size
                self._base = status_bytes("VmRSS:")
        else:
            self.timer.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step % self.cycle:
            return
        if self.phase(step) == "memory":
            self.peak = (torch.cuda.max_memory_allocated() if self.cuda else status_bytes("VmHWM:")) - self._base
        else:
            self.timer.__exit__(None, None, None)


def measure(name: str, vocab: int, hidden: int, layers: int, batch: int, length: int, off_policy: bool):
    cycle = 2 if off_policy else 1
    settings = Namespace(steps=2 * cycle, batch=batch, generations=batch, length=length, hidden=hidden,
                         layers=layers, off_policy=off_policy)  # fmt: skip
    dataset = Dataset.from_list([{"prompt": f"{a}+{b}="} for a in range(20) for b in range(20)])
    phases = Phases(cycle, torch.cuda.is_available())
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(name, CONFIGS[name], settings, vocab, build_tokenizer(vocab), dataset, Path(out))
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(phases)
        trainer.train()
    timer = phases.timer
    total = sum(timer.ns.values())
    head = sum(ns for site, ns in timer.sites.items() if site.split()[1].startswith(TRL_HEAD))
    ours = timer.ns.get("entropy_rl", 0)
    top = sorted(((ns, site) for site, ns in timer.sites.items() if site.startswith("entropy_rl")), reverse=True)
    return {
        "config": name,
        "off_policy": off_policy,
        "vocab": vocab,
        "hidden": hidden,
        "layers": layers,
        "batch": batch,
        "length": length,
        "tokens_per_step": batch * length,
        "steps_timed": cycle,
        "ms_by_owner": {who: ns / 1e6 for who, ns in timer.ns.most_common()},
        "step_ms": total / 1e6,
        "entropy_rl_ms": ours / 1e6,
        "trl_head_ms": head / 1e6,
        "added_fraction": ours / max(total - ours, 1),
        "entropy_rl_top": [{"ms": ns / 1e6, "site": site} for ns, site in top[:8]],
        "peak_memory_bytes": phases.peak,
        "largest_tensor": {who: {"bytes": b, "site": site} for who, (b, site) in timer.largest.items()},
    }


def with_net(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Net added time (one pass: minus the TRL forward it took over) and memory ratio, against plain TRL's row."""
    base = {tuple(r[k] for k in KEYS): r for r in rows if r["config"] == "trl"}
    for row in rows:
        trl = base.get(tuple(row[k] for k in KEYS))
        if trl is None:
            continue
        replaced = max(trl["trl_head_ms"] - row["trl_head_ms"], 0.0) if row["config"] in ONE_PASS else 0.0
        row["replaced_trl_ms"] = replaced
        row["net_added_ms"] = row["entropy_rl_ms"] - replaced
        row["net_added_fraction"] = row["net_added_ms"] / max(trl["step_ms"] * row["steps_timed"], 1e-9)
        # Below a MiB of peak the resident set did not grow (the allocator reused pages): no ratio to give.
        big = (trl["peak_memory_bytes"] or 0) >= 2**20 and row["peak_memory_bytes"] is not None
        row["memory_ratio"] = row["peak_memory_bytes"] / trl["peak_memory_bytes"] if big else None
    return rows


def grid(args) -> list[tuple[int, int, int]]:
    """(vocab, hidden, length) points: the product of the lists, or with --curves one axis at a time."""
    if not args.curves:
        return [(v, h, n) for v in args.vocab for h in args.hidden for n in args.length]
    v0, h0, n0 = (
        args.vocab[len(args.vocab) // 2],
        args.hidden[len(args.hidden) // 2],
        args.length[len(args.length) // 2],
    )
    points = [(v, h0, n0) for v in args.vocab] + [(v0, h, n0) for h in args.hidden] + [(v0, h0, n) for n in args.length]
    return list(dict.fromkeys(points))


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| vocabulary | width | completions × tokens | configuration | step ops (ms) | entropy-rl ops (ms) "
        "| share of the rest | TRL forward taken over (ms) | net added | peak memory (MiB) | memory ratio "
        "| largest entropy-rl tensor |",
        "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        largest = r["largest_tensor"].get("entropy_rl")
        tensor = f"{largest['bytes'] / 2**10:.0f} KiB (`{largest['site']}`)" if largest else "none"
        net = f"{100 * r['net_added_fraction']:+.2f} %" if "net_added_fraction" in r else ""
        ratio = "–" if r.get("memory_ratio") is None else f"{r['memory_ratio']:.3f}"
        peak = "–" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**20:.1f}"
        name = r["config"] + (" (off-policy)" if r["off_policy"] else "")
        lines.append(
            f"| {r['vocab']:,} | {r['hidden']} | {r['batch']} × {r['length']:,} | {name} | {r['step_ms']:.0f} | "
            f"{r['entropy_rl_ms']:.1f} | {100 * r['added_fraction']:.2f} % | {r.get('replaced_trl_ms', 0):.1f} | "
            f"{net} | {peak} | {ratio} | {tensor} |"
        )
    return "\n".join(lines) + "\n"


def plot(path: Path) -> Path:
    """Cost curves from a --curves JSON: added time and memory of the diagnostics against each size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = json.loads(path.read_text())
    rows = [r for r in report["rows"] if r["config"] == "diagnostics"]
    middle = report["middle"]
    axes_spec = [("tokens_per_step", "completion tokens per step"), ("vocab", "vocabulary"), ("hidden", "hidden size")]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for col, (key, label) in enumerate(axes_spec):
        others = [k for k, _ in axes_spec if k != key]
        line = sorted((r for r in rows if all(r[k] == middle[k] for k in others)), key=lambda r: r[key])
        xs = [r[key] for r in line]
        ax = axes[0][col]
        ax.plot(xs, [r["entropy_rl_ms"] for r in line], "o-", label="entropy-rl operations (gross)")
        ax.plot(xs, [r["net_added_ms"] for r in line], "s--", label="net of the TRL forward taken over")
        ax.plot(xs, [r["step_ms"] / 100 for r in line], "k:", label="1 % of the step")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("CPU ms per step")
        ax.legend(fontsize=7)
        ax = axes[1][col]
        ax.plot(xs, [r["largest_tensor"].get("entropy_rl", {"bytes": 0})["bytes"] / 2**20 for r in line], "o-",
                label="largest entropy-rl tensor")  # fmt: skip
        trl = [
            next(t for t in report["rows"] if t["config"] == "trl" and all(t[k] == r[k] for k in KEYS)) for r in line
        ]
        ax.plot(xs, [t["largest_tensor"]["trl"]["bytes"] / 2**20 for t in trl], "k:", label="largest TRL tensor")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("MiB")
        ax.legend(fontsize=7)
    fig.suptitle(f"diagnostics: added work and memory per step (others fixed at {middle})", fontsize=9)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    parser.add_argument("--vocab", type=ints, default=[32768, 152064])
    parser.add_argument("--hidden", type=ints, default=[64])
    parser.add_argument("--length", type=ints, default=[256, 1024], help="max completion tokens")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4, help="completions per step (one prompt's group)")
    parser.add_argument("--configs", default="trl,diagnostics,clip_cov,kl_cov,steer,clip_b,clip_v,clip_higher,"
                        "entropy_bonus,high_entropy_tokens")  # fmt: skip
    parser.add_argument("--curves", action="store_true", help="vary one size at a time around the middle values")
    parser.add_argument("--plot", type=Path, help="draw the cost curves of this --curves JSON and exit")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    if args.plot:
        print(f"wrote {plot(args.plot)}")
        return {}
    torch.set_num_threads(1)
    names = [("trl", False), *((n, n == "kl_cov") for n in args.configs.split(",") if n != "trl")]
    if ("kl_cov", True) in names:
        names.append(("trl", True))  # KL-Cov's baseline: plain TRL off-policy
    if args.curves:
        names = [("trl", False), ("diagnostics", False)]
    started = time.perf_counter()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (1 thread)"
    middle = {"vocab": args.vocab[len(args.vocab) // 2], "hidden": args.hidden[len(args.hidden) // 2],
              "tokens_per_step": args.batch * args.length[len(args.length) // 2]}  # fmt: skip
    report = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "device": device,
              "middle": middle, "rows": []}  # fmt: skip
    for vocab, hidden, length in grid(args):
        for name, off_policy in names:
            r = measure(name, vocab, hidden, args.layers, args.batch, length, off_policy)
            report["rows"] = with_net([*report["rows"], r])
            report["wall_time_s"] = time.perf_counter() - started
            if args.output:  # after every row: a long sweep cut short keeps what it measured
                args.output.write_text(json.dumps(report, indent=1))
            print(f"V={vocab} d={hidden} T={length} {name:20s} step {r['step_ms']:9.1f} ms  entropy_rl "
                  f"{r['entropy_rl_ms']:8.2f} ms ({100 * r['added_fraction']:.2f} %)", flush=True)  # fmt: skip
    text = markdown(report["rows"])
    print(text)
    if args.output and args.curves:
        print(f"wrote {plot(args.output)}")
    if args.markdown:
        args.markdown.write_text(text)
    return report


if __name__ == "__main__":
    main()
