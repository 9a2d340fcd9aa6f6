"""The GPU check, in one call on one H100 / H200 (under 8 minutes): what a CPU cannot show about entropy-rl.

    python perf/gpu_check.py --output-dir runs/gpu-check             # report.json and report.md in that folder
    python perf/gpu_check.py --dry-run --output-dir /tmp/gpu-check   # the same code paths on the CPU, tiny sizes

1. Environment: torch, CUDA, device, Triton, TRL, transformers.
2. The Triton fold (entropy_rl.triton_fold) against the torch path (stats.VocabSums.fold) on the same bf16 logits
   tiles, and both against a float64 softmax of those logits: largest error of log p, H and N.
3. End-to-end: perf/overhead.py's interleaved blocks at a 1.5B-like shape (width 1536, 28 layers, vocabulary
   151,936, random weights, bf16 autocast): step time and peak memory (max_memory_allocated) of the diagnostics and
   of every regularizer against plain TRL, with `trl_null` (plain TRL again) as the noise floor; KL-Cov in its own
   off-policy sweep.
4. Host synchronisations per optimizer step of entropy-rl's code for every method, under
   torch.cuda.set_sync_debug_mode (perf/host_syncs.py).

--dry-run uses tiny sizes and the CPU for everything; the Triton part runs only where Triton is installed (under
its interpreter on the CPU). Sections that fail are reported with their error and the others still run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from argparse import Namespace
from pathlib import Path
from typing import Any

import torch

SIZES = {
    "gpu": dict(vocab=151936, hidden=1536, layers=28, batch=8, generations=8, length=64, steps=3, warmup=1, blocks=2,
                fold_rows=1024),
    "dry": dict(vocab=300, hidden=32, layers=1, batch=8, generations=8, length=4, steps=3, warmup=1, blocks=1,
                fold_rows=16),
}  # fmt: skip
ON_POLICY = "trl,trl_null,diagnostics,clip_cov,steer,clip_b,clip_v,clip_higher,entropy_bonus,high_entropy_tokens"


def environment() -> dict[str, Any]:
    import transformers
    import trl

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if cuda else "CPU",
        "device_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
        "triton": importlib.util.find_spec("triton") and __import__("triton").__version__,
        "trl": trl.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
    }


def reference(z: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """log p(target), H and N of softmax(z) in float64."""
    logp = torch.log_softmax(z.double(), -1)
    p = logp.exp()
    entropy = -(p * logp).sum(-1)
    nec = (p * p * (logp + entropy[:, None])).sum(-1)
    return logp.gather(-1, targets[:, None])[:, 0], entropy, nec


def fold_check(rows: int, vocab: int, device: str) -> dict[str, Any]:
    """Fold bf16 logits tiles (TRL's 32,768-wide vocabulary chunks) by Triton and by torch; errors against float64."""
    from trl.kernels.chunked_logprob import _torch_transform

    from entropy_rl import stats

    g = torch.Generator(device=device).manual_seed(0)
    z = (torch.randn(rows, vocab, generator=g, device=device) * 3).to(torch.bfloat16)
    targets = torch.randint(0, vocab, (rows,), generator=g, device=device)
    args = {"logit_scale": 1.0, "softcap": 1.0, "inv_t": 1.0, "HAS_SOFTCAP": False}
    paths = {"torch": None}
    if importlib.util.find_spec("triton") is not None and (device == "cuda" or os.environ.get("TRITON_INTERPRET")):
        from entropy_rl.triton_fold import fold_tile

        paths["triton"] = fold_tile
    results: dict[str, Any] = {"rows": rows, "vocab": vocab, "logits": "bf16, std 3"}
    want = reference(z.float(), targets)
    outputs = {}
    for name, kernel in paths.items():
        sums, raw = stats.VocabSums.empty(rows, device), torch.zeros(rows, device=device)
        for start in range(0, vocab, stats.VOCAB_CHUNK):
            tile = z[:, start : start + stats.VOCAB_CHUNK].contiguous()
            if kernel is None:
                sums.fold(_torch_transform(tile.float(), **args), targets - start, raw)
            else:
                kernel(tile, targets, sums, raw, start, args)
        outputs[name] = sums.finish()
        for label, got, exact in zip(("logp", "H", "N"), outputs[name], want, strict=True):
            results[f"{name}_vs_float64_max_abs_{label}"] = (got.double() - exact).abs().max().item()
    if "triton" in outputs:
        for label, a, b in zip(("logp", "H", "N"), outputs["triton"], outputs["torch"], strict=True):
            results[f"triton_vs_torch_max_abs_{label}"] = (a - b).abs().max().item()
    else:
        results["triton"] = "not run: Triton is not installed here (or no GPU and no TRITON_INTERPRET)"
    return results


def step_ratios(size: dict[str, Any], workdir: Path) -> list[dict[str, Any]]:
    from overhead import sweep

    args = Namespace(
        **{k: v for k, v in size.items() if k != "fold_rows"}, workdir=workdir, off_policy=False, output=None
    )
    rows = [{**row, "off_policy": False} for row in sweep(size["vocab"], ON_POLICY.split(","), args)]
    args.off_policy = True
    rows += [{**row, "off_policy": True} for row in sweep(size["vocab"], ["trl", "kl_cov"], args)]
    return rows


def syncs(device: str) -> dict[str, Any]:
    from host_syncs import methods, report

    return report(methods(), steps=2, device=device)


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"# GPU check: {env.get('device')}",
        "",
        f"`python perf/gpu_check.py{' --dry-run' if report['dry_run'] else ''}`, {report['wall_time_s']:.0f} s; "
        f"torch {env.get('torch')}, CUDA {env.get('cuda')}, Triton {env.get('triton')}, TRL {env.get('trl')}, "
        f"transformers {env.get('transformers')}; sizes {report['sizes']}.",
        "",
    ]
    fold = report["sections"].get("fold_check", {})
    if "error" in fold:
        lines += [f"Fold check failed: {fold['error']}", ""]
    elif fold:
        lines += ["## The fold of the logits tiles", "", "| quantity | max abs error |", "| --- | ---: |"]
        lines += [f"| {k} | {v:.3g} |" for k, v in fold.items() if k.endswith(("logp", "H", "N"))]
        lines += ["", str(fold.get("triton", "")), ""]
    steps = report["sections"].get("step_ratios", {})
    if isinstance(steps, dict) and "error" in steps:
        lines += [f"Step ratios failed: {steps['error']}", ""]
    elif steps:
        lines += [
            "## Step time and peak memory against plain TRL",
            "",
            "Ratio mean [95 % bootstrap interval over blocks] (range over blocks).",
            "",
            "| configuration | ms/step | wall-time ratio | peak memory (MiB) | memory ratio |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for r in steps:
            name = r["config"] + (" (off-policy)" if r["off_policy"] else "")
            wall, mem = r["wall_ratio"], r["memory_ratio"]
            lines.append(
                f"| {name} | {r['wall_step_ms']:.0f} | {wall['mean']:.3f} [{wall['ci95'][0]:.3f}, "
                f"{wall['ci95'][1]:.3f}] ({wall['min']:.2f}–{wall['max']:.2f}) | {r['peak_memory_mb']:.0f} | "
                f"{mem['mean']:.3f} [{mem['ci95'][0]:.3f}, {mem['ci95'][1]:.3f}] |"
            )
        lines.append("")
    sync = report["sections"].get("host_syncs", {})
    if "error" in sync:
        lines += [f"Host-sync count failed: {sync['error']}", ""]
    elif sync:
        from host_syncs import markdown as sync_table

        lines += ["## Host synchronisations per optimizer step (entropy-rl's code)", "", sync_table(sync)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: the same code paths")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/gpu-check"))
    parser.add_argument("--skip", default="", help="comma-separated sections to leave out: fold_check,step_ratios,...")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU, or pass --dry-run")
    device = "cpu" if args.dry_run else "cuda"
    size = SIZES["dry" if args.dry_run else "gpu"]
    if args.dry_run:
        torch.set_num_threads(1)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: dict[str, Any] = {"dry_run": args.dry_run, "sizes": size, "environment": environment(), "sections": {}}
    sections = {
        "fold_check": lambda: fold_check(size["fold_rows"], size["vocab"], device),
        "step_ratios": lambda: step_ratios(size, args.output_dir / "work"),
        "host_syncs": lambda: syncs(device),
    }
    for name, run in sections.items():
        if name in args.skip.split(","):
            continue
        t0 = time.perf_counter()
        try:
            report["sections"][name] = run()
        except Exception as err:  # one failing section must not hide the others' numbers
            report["sections"][name] = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()}
        report[f"{name}_s"] = time.perf_counter() - t0
        print(f"{name}: {report[f'{name}_s']:.0f} s", flush=True)
    report["wall_time_s"] = time.perf_counter() - started
    (args.output_dir / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (args.output_dir / "report.md").write_text(markdown(report))
    print(markdown(report))
    failed = [name for name, value in report["sections"].items() if isinstance(value, dict) and "error" in value]
    if failed:
        print(f"sections failed: {failed}", file=sys.stderr)
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
