"""How many points the entropy-performance fit needs: its intervals' coverage and chance R² against n.

    python perf/fit_small_n.py [--trials 2000] [--noise 0.02] [--sizes 3,4,...]

Draws n points of a known law R = b - a exp(H) (entropy collapsing over a run, as in tests/test_fit.py, n evaluated
checkpoints spread evenly over it, Gaussian noise on R), fits them with entropy_rl.fit.fit_law and counts how often
the 95 % t-intervals of a and of the ceiling b - a contain the true values (a nominal 95 % interval that covers far
less often is overconfident). It also fits pure noise (a = 0: R does not depend on H) at the same
entropies and counts how often R² still exceeds 0.5. docs/fit.md states the n from which `entropy-rl fit` stops
warning (entropy_rl.fit.MIN_RELIABLE_POINTS) and quotes this table.
"""

from __future__ import annotations

import argparse

import numpy as np

from entropy_rl.fit import fit_law

A, B = 0.4, 0.9  # the law of tests/test_fit.py


def entropy_path(steps: np.ndarray) -> np.ndarray:
    return 0.2 + 1.0 * np.exp(-steps / 30.0)


def coverage(n: int, trials: int, noise: float, seed: int) -> tuple[float, float, float]:
    """(coverage of a's interval, of the ceiling's, median ceiling interval width) over `trials` simulated runs."""
    rng = np.random.default_rng(seed)
    H = entropy_path(np.linspace(1, 120, n))
    hits_a = hits_c = 0
    widths = []
    for _ in range(trials):
        R = B - A * np.exp(H) + rng.normal(0, noise, n)
        fit = fit_law(H, R)
        hits_a += fit.a_ci[0] <= A <= fit.a_ci[1]
        hits_c += fit.ceiling_ci[0] <= B - A <= fit.ceiling_ci[1]
        widths.append(fit.ceiling_ci[1] - fit.ceiling_ci[0])
    return hits_a / trials, hits_c / trials, float(np.median(widths))


def chance_r2(n: int, trials: int, seed: int) -> float:
    """Fraction of fits to pure noise (R independent of H) that reach R² > 0.5."""
    rng = np.random.default_rng(seed)
    H = entropy_path(np.linspace(1, 120, n))
    return float(np.mean([fit_law(H, rng.normal(0, 1, n)).r2 > 0.5 for _ in range(trials)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--noise", type=float, default=0.02)
    parser.add_argument("--sizes", default="3,4,5,6,7,8,10,12,15,20,30")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| n | coverage of a's 95 % interval | of the ceiling's | median ceiling interval width | noise: R² > 0.5 |")
    print("|---|---|---|---|---|")
    for n in (int(size) for size in args.sizes.split(",")):
        cov_a, cov_c, width = coverage(n, args.trials, args.noise, args.seed)
        noise = chance_r2(n, 20 * args.trials, args.seed)
        print(f"| {n} | {cov_a:.0%} | {cov_c:.0%} | {width:.3f} | {noise:.1%} |")


if __name__ == "__main__":
    main()
