"""Math-benchmark evaluation of a model or of every checkpoint of a run (docs/evaluation.md).

    benchmarks   benchmark specs (eval/benchmarks/*.yaml) and their problems; no torch
    scoring      pass@k, per-benchmark metrics from per-problem records, per-sample seeds
    generation   sampling with transformers or vLLM, with the token entropy of each response
    runner       evaluate a benchmark, a checkpoint or a run (curve.jsonl through entropy_rl.rundir)

The command `entropy-rl eval` is entropy_rl.cli.eval. Nothing is re-exported here: import the module you need.
"""
