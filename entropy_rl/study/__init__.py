"""`entropy-rl study`: GRPO and every regularizer x seeds on one task, evaluated, fitted and written up as one page.

For each method and seed, one after another: train (`entropy_rl.training`, the method's recipe plus the study's
steps, seed and checkpoint interval), evaluate every checkpoint on the held-out benchmark (`entropy_rl.evaluation`,
rows in RUN_DIR/curve.jsonl). Then fit the entropy-performance law per run, jointly and from the first 15 % of each
run (`entropy_rl.fit`), correlate the predicted and measured entropy changes, and write <doc_dir>/<name>.md with its
figures <doc_dir>/<name>_*.png, regenerated entirely on every invocation.

    spec.py      the study YAML: schema, validation into a `Study`, command-line overrides
    plan.py      each method x seed as a train command line, checked, with its state (finished / resume / new)
    execute.py   training and evaluating the plan, recorded times, worker processes
    analysis.py  numbers per run, per method over seeds and over all runs
    figures.py   the page's figures
    page.py      the page, one builder per section
    summary.py   the per-run summaries the page is computed from (<doc_dir>/<name>_runs/, committed with it)

The command (argument parsing, printing, exit codes) is entropy_rl/cli/study.py. Nothing is imported here: the
submodules pull in torch and TRL.
"""
