"""Kill a tiny training run with SIGKILL right after each file of a checkpoint is written; report what is left.

    python tests/scripts/kill_window.py MODEL_DIR WORK_DIR  # writes WORK_DIR/results.json (tests/test_kill_window.py)

Every file-writing call of the process is observed: Python's audit events (`open` for writing, `os.rename`,
`os.rmdir`, `shutil.rmtree`) and wrappers around `torch.save` and transformers' safetensors writer (their C++/Rust
writers raise no audit event). A reference run records the calls made while checkpoint-2 is saved; then, for each
call k, a fresh run is killed just before call k, that is right after the file of call k-1 is complete. The last
case is killed at the first call after the checkpoint was renamed into place.

The runs are forked from this process after the imports (no torch op runs before the fork, so no thread pool is
copied): one import for all cases keeps the test short.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

TARGET = "checkpoint-2"  # the save that is interrupted; checkpoint-1 before it is complete


def train_argv(model_dir: str, out: Path, *extra: str) -> list[str]:
    flags = {
        "model_name_or_path": model_dir,
        "output_dir": str(out),
        "reward_funcs": "helpers.length_parity_reward",
        "max_steps": 3,
        "save_steps": 1,
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "max_completion_length": 4,
        "learning_rate": 1e-3,
        "dynamics_every": 0,
        "regularizer": "clip_cov",
        "clip_cov_ratio": 0.2,
        "clip_cov_lb": -5,
        "disable_tqdm": "true",
        "report_to": "none",
    }
    argv = ["train"]
    for key, value in flags.items():
        argv += [f"--{key}", str(value)]
    return [*argv, *extra]


class Watcher:
    """Numbers the file-writing calls from the first write into the target checkpoint's staging folder to the
    first call after that folder was renamed into place; records them, or kills the process before call `kill_at`."""

    def __init__(self, run_dir: Path, kill_at: int | None):
        self.run_dir, self.kill_at = str(run_dir), kill_at
        self.staged = str(run_dir / ".staging" / TARGET)
        self.calls: list[str] = []
        self.phase = "before"  # before -> saving -> published -> done

    def event(self, kind: str, path: str, dest: str | None = None) -> None:
        if self.phase == "done" or not path.startswith(self.run_dir):
            return
        if self.phase == "before":
            if not path.startswith(self.staged):
                return
            self.phase = "saving"
        if self.kill_at is not None and len(self.calls) == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        self.calls.append(f"{kind} {os.path.relpath(path, self.run_dir)}")
        if self.phase == "published":
            self.phase = "done"
        elif kind == "rename" and path == self.staged:
            self.phase = "published"

    def audit(self, name: str, args: tuple) -> None:
        if name == "open" and isinstance(args[0], str):
            mode, flags = args[1], args[2]
            write_flags = bool(flags & (os.O_WRONLY | os.O_RDWR))
            if any(c in mode for c in "wax+") if isinstance(mode, str) else write_flags:
                self.event("open", args[0])
        elif name == "os.rename" and isinstance(args[0], str | os.PathLike):
            self.event("rename", os.fspath(args[0]))
        elif name in ("os.rmdir", "shutil.rmtree") and isinstance(args[0], str | os.PathLike):
            self.event(name, os.fspath(args[0]))


def install(watcher: Watcher) -> None:
    import torch
    import transformers.modeling_utils as modeling_utils

    sys.addaudithook(watcher.audit)
    torch_save, safe_save = torch.save, modeling_utils.safe_save_file

    def save(obj, f, *args, **kwargs):
        if isinstance(f, str | os.PathLike):
            watcher.event("torch.save", os.fspath(f))
        return torch_save(obj, f, *args, **kwargs)

    def save_safetensors(tensors, filename, *args, **kwargs):
        watcher.event("safetensors", os.fspath(filename))
        return safe_save(tensors, filename, *args, **kwargs)

    torch.save, modeling_utils.safe_save_file = save, save_safetensors


def in_child(body) -> int:
    """Run `body` in a forked child; return its wait status (a child killed by SIGKILL: -9)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = body()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def run(model_dir: str, out: Path, kill_at: int | None, calls_file: Path | None = None, *extra: str) -> int:
    from entropy_rl.cli import main

    def body() -> int:
        watcher = Watcher(out, kill_at)
        install(watcher)
        code = main(train_argv(model_dir, out, *extra))
        if calls_file is not None:
            calls_file.write_text(json.dumps(watcher.calls))
        return code

    return in_child(body)


def metrics(out: Path) -> list[dict]:
    from entropy_rl.jsonl import read_rows

    return read_rows(out / "metrics.jsonl")


def main(model_dir: str, work: Path) -> None:
    import entropy_rl.cli.train  # noqa: F401  (imports torch, transformers, trl before any fork)
    from entropy_rl.checkpoint_files import checkpoint_problem, latest_checkpoint
    from entropy_rl.rundir import list_checkpoints
    from entropy_rl.trainer import EntropyGRPOTrainer  # noqa: F401

    reference = work / "reference"
    assert run(model_dir, reference, None, work / "calls.json") == 0
    calls = json.loads((work / "calls.json").read_text())
    final_files = sorted(p.name for p in (reference / TARGET).iterdir())
    cases = []
    for k in range(1, len(calls)):
        out = work / f"kill{k}"
        status = run(model_dir, out, k)
        visible = {path.name: checkpoint_problem(path) for _, path in list_checkpoints(out)}
        chosen, _ = latest_checkpoint(out)
        case = {"after": calls[k - 1], "status": status, "checkpoints": visible, "latest": chosen and chosen.name}
        # Resume the two cases on either side of the rename (the others leave the same complete checkpoints).
        if calls[k - 1].startswith("rename") or calls[k].startswith("rename"):
            case["resume_status"] = run(model_dir, out, None, None, "--resume_from_checkpoint", "latest")
            case["resumed_rows"] = metrics(out)
        cases.append(case)
    result = {"calls": calls, "final_files": final_files, "reference_rows": metrics(reference), "cases": cases}
    (work / "results.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
