"""pytest plugin for .ci/trl_suite: runs TRL's tests/test_grpo_trainer.py offline, optionally on EntropyGRPOTrainer.

Environment: TRL_SUITE_SWAP=1 puts `entropy_rl.EntropyGRPOTrainer` in place of `GRPOTrainer` (in `trl`, `trl.trainer`
and `trl.trainer.grpo_trainer`) before the test module is imported, so its `from trl import GRPOTrainer` and every
patch by dotted path reach the subclass; TRL_SUITE_STANDINS names the stand-ins' standins.json (datasets served from
local folders); TRL_SUITE_JSON is where each test's outcome is written.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re

import pytest

# A model load that found no stand-in in the offline Hub cache fails with one of these.
_NO_HUB = re.compile(
    r"offline mode|OfflineModeIsEnabled|LocalEntryNotFound|couldn't connect to|not a valid model identifier|"
    r"is not a local folder"
)
_HUB_ID = re.compile(r"(?:trl-internal-testing|trl-lib|HuggingFaceTB|Qwen|google)/[\w.-]+")
_results: dict[str, dict] = {}


def _swap_trainer() -> str:
    from entropy_rl import EntropyGRPOTrainer

    # trl's lazy modules do not expose submodules as attributes: import each by name.
    for name in ("trl", "trl.trainer", "trl.trainer.grpo_trainer"):
        importlib.import_module(name).GRPOTrainer = EntropyGRPOTrainer
    return f"{EntropyGRPOTrainer.__module__}.{EntropyGRPOTrainer.__qualname__}"


def _serve_local_datasets(folders: dict[str, str]) -> None:
    import datasets

    load_dataset = datasets.load_dataset

    def local_load_dataset(path, *args, **kwargs):
        return load_dataset(folders.get(path, path), *args, **kwargs)

    datasets.load_dataset = local_load_dataset


def pytest_configure(config):
    # TRL's tests/testing_utils.py imports this helper, which the installed TRL may not define.
    import_utils = importlib.import_module("trl.import_utils")
    if not hasattr(import_utils, "is_joblib_available"):
        import_utils.is_joblib_available = lambda: importlib.util.find_spec("joblib") is not None
    with open(os.environ["TRL_SUITE_STANDINS"]) as file:
        _serve_local_datasets(json.load(file)["datasets"])
    config.trl_suite_trainer = _swap_trainer() if os.environ.get("TRL_SUITE_SWAP") == "1" else "trl.GRPOTrainer"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that fails only because a Hub repository has no local stand-in is reported as skipped, naming it."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.excinfo is not None:
        text = str(call.excinfo.value)
        if _NO_HUB.search(text):
            repo = _HUB_ID.search(text)
            reason = f"no offline stand-in for {repo.group(0) if repo else 'a Hub repository'}"
            report.outcome, report.longrepr = "skipped", (str(item.path), item.location[1] or 0, reason)


def pytest_runtest_logreport(report):
    entry = _results.setdefault(report.nodeid, {"outcome": "passed"})
    if report.when == "call" and "duration" not in entry:
        entry["duration"] = round(report.duration, 2)
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        entry.update(
            outcome="xfailed" if hasattr(report, "wasxfail") else "skipped", reason=reason.removeprefix("Skipped: ")
        )
    elif report.failed:
        failed = "failed" if report.when == "call" else "error"
        lines = [line for line in str(report.longrepr).splitlines() if line.startswith("E ")]
        if entry["outcome"] == "passed":
            entry.update(outcome=failed, message=" | ".join(lines[-3:])[:500])
    elif report.when == "call" and hasattr(report, "wasxfail"):
        entry.update(outcome="xpassed")


def pytest_sessionfinish(session):
    import sys

    module = sys.modules.get("tests.test_grpo_trainer")
    imported = getattr(module, "GRPOTrainer", None)
    meta = {
        "trainer": session.config.trl_suite_trainer,
        "test_module_GRPOTrainer": f"{imported.__module__}.{imported.__qualname__}" if imported else None,
    }
    with open(os.environ["TRL_SUITE_JSON"], "w") as file:
        json.dump({"meta": meta, "tests": _results}, file, indent=1, sort_keys=True)
