"""Checkpoint safety in entropy_rl.rundir: what counts as complete and loadable, the `latest` fallback, publishing by
rename, and what a new run may take over. Checkpoints here are built from the same writers the trainer uses (torch.save,
safetensors, JSON), without training."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from entropy_rl import checkpoint_files, rundir
from entropy_rl.checkpoint_files import CheckpointError


def make_checkpoint(run_dir, step: int, world_size: int = 1, manifest: bool = True):
    folder = run_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    save_file({"w": torch.arange(64, dtype=torch.float32)}, folder / "model.safetensors")
    torch.save({"state": {0: {"exp_avg": torch.ones(64)}}}, folder / "optimizer.pt")
    torch.save({"last_epoch": step}, folder / "scheduler.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    for name in checkpoint_files.rank_files(world_size):
        torch.save({"generator": torch.Generator().get_state()}, folder / name)
    if manifest:
        checkpoint_files.write_manifest(folder, step, world_size)
    return folder


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_written_checkpoint_is_complete(tmp_path):
    folder = make_checkpoint(tmp_path, 4, world_size=2)
    assert checkpoint_files.checkpoint_problem(folder) is None
    manifest = json.loads((folder / checkpoint_files.MANIFEST_FILE).read_text())
    assert manifest["world_size"] == 2 and "rng_state_1.pth" in manifest["files"]
    assert checkpoint_files.verify_checkpoint(folder) == folder


@pytest.mark.parametrize(
    "name", ["model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json", "entropy_rl_state_rank0.pt"]
)
def test_truncated_file_is_named_and_the_previous_checkpoint_offered(tmp_path, name):
    previous = make_checkpoint(tmp_path, 2)
    folder = make_checkpoint(tmp_path, 4)
    truncate(folder / name)
    with pytest.raises(CheckpointError) as err:
        checkpoint_files.verify_checkpoint(folder)
    message = str(err.value)
    assert "\n" not in message and f"{name} is " in message and "truncated" in message
    assert f"resume from {previous} instead" in message


@pytest.mark.parametrize(
    "name", ["model.safetensors", "optimizer.pt", "trainer_state.json", "entropy_rl_state_rank0.pt", "rng_state.pth"]
)
def test_truncated_file_without_a_manifest_is_found_by_its_format(tmp_path, name):
    # A checkpoint of plain TRL or an older entropy-rl has no manifest: the file formats themselves show the cut.
    folder = make_checkpoint(tmp_path, 4, manifest=False)
    assert checkpoint_files.checkpoint_problem(folder) is None
    truncate(folder / name)
    assert checkpoint_files.checkpoint_problem(folder).startswith(name)


@pytest.mark.parametrize("name", ["rng_state.pth", "entropy_rl_state_rank0.pt", "trainer_state.json"])
def test_missing_rng_or_regularizer_state_is_refused(tmp_path, name):
    # These used to be skipped silently on resume, and the run drifted.
    for manifest in (True, False):
        folder = make_checkpoint(tmp_path / str(manifest), 4, manifest=manifest)
        (folder / name).unlink()
        assert checkpoint_files.checkpoint_problem(folder) == f"{name} is missing"


def test_missing_rank_file_of_a_two_process_run(tmp_path):
    folder = make_checkpoint(tmp_path, 4, world_size=2)
    (folder / "entropy_rl_state_rank1.pt").unlink()
    assert checkpoint_files.checkpoint_problem(folder) == "entropy_rl_state_rank1.pt is missing"


def test_same_size_corruption_of_a_small_archive_fails_its_crc(tmp_path):
    folder = make_checkpoint(tmp_path, 4)
    path = folder / "scheduler.pt"
    data = bytearray(path.read_bytes())
    offset = data.index(b"last_epoch")  # inside a stored (uncompressed) member
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    assert "scheduler.pt is corrupted (CRC mismatch" in checkpoint_files.checkpoint_problem(folder)


def test_every_problem_is_listed_in_one_line(tmp_path):
    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    (folder / "trainer_state.json").write_text("{}")
    problem = checkpoint_files.checkpoint_problem(folder)
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "entropy_rl_state_rank0.pt"):
        assert f"{name} is missing" in problem
    with pytest.raises(CheckpointError, match="there is no earlier complete checkpoint"):
        checkpoint_files.verify_checkpoint(folder)


def test_latest_skips_broken_checkpoints_and_says_why(tmp_path):
    assert checkpoint_files.latest_checkpoint(tmp_path) == (None, [])
    make_checkpoint(tmp_path, 2)
    good = make_checkpoint(tmp_path, 4)
    broken = make_checkpoint(tmp_path, 6)
    truncate(broken / "optimizer.pt")
    partial = make_checkpoint(tmp_path, 8)
    (partial / checkpoint_files.MANIFEST_FILE).write_text('{"step": 8, "files": {')  # cut off
    path, skipped = checkpoint_files.latest_checkpoint(tmp_path)
    assert path == good
    assert skipped[0].startswith("checkpoint-8 (entropy_rl_checkpoint.json is unreadable")
    assert skipped[1].startswith("checkpoint-6 (optimizer.pt is ")


def test_publish_renames_into_place_and_replaces_a_checkpoint_of_the_same_step(tmp_path):
    staging = checkpoint_files.clear_staging(tmp_path)
    old = make_checkpoint(tmp_path, 4)
    (old / "stale").write_text("from the abandoned future")
    new = make_checkpoint(staging, 4)
    assert rundir.list_checkpoints(tmp_path) == [(4, old)]  # the staged one is not a checkpoint of the run
    checkpoint_files.publish_checkpoint(new, tmp_path / "checkpoint-4")
    assert not (tmp_path / "checkpoint-4" / "stale").exists() and checkpoint_files.checkpoint_problem(old) is None
    assert not staging.exists()


def test_run_contents_and_what_a_fresh_or_resumed_start_removes(tmp_path):
    assert rundir.run_contents(tmp_path / "nothing") == [] and rundir.run_contents(tmp_path) == []
    rundir.write_config(tmp_path, {"metrics_file": "metrics.jsonl"})
    assert rundir.run_contents(tmp_path) == []  # a config alone: a run that failed before its first step
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 7)))
    for step in (2, 4, 6):
        make_checkpoint(tmp_path, step)
    (tmp_path / "final").mkdir()
    (tmp_path / "curve.jsonl").write_text('{"step": 2}\n{"step": 6}\n')
    assert rundir.run_contents(tmp_path) == ["metrics.jsonl (6 rows)", "3 checkpoints (last: checkpoint-6)", "final/"]
    # Resumed at step 2: the later rows, checkpoints and curve rows belong to the future it replaces.
    assert rundir.start_rows(tmp_path, "metrics.jsonl", 2) == [{"step": 1}, {"step": 2}]
    assert [s for s, _ in rundir.list_checkpoints(tmp_path)] == [2] and (tmp_path / "final").exists()
    assert (tmp_path / "curve.jsonl").read_text() == '{"step": 2}\n'
    # A fresh start (step 0) takes everything over.
    assert rundir.start_rows(tmp_path, "metrics.jsonl", 0) == []
    assert rundir.run_contents(tmp_path) == []


def test_unwritable_output_dir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(rundir.RunDirError, match=r"output_dir='.*file/run' is not writable \(Not a directory\)"):
        rundir.check_writable(blocker / "run")
