"""pass@k by the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained
on Code", section 2.1): with n samples of which c pass, the chance that k samples drawn without
replacement include a pass is 1 - C(n-c, k) / C(n, k). The binomials overflow floats for n in the
hundreds, so it is computed as the product 1 - prod_{i=n-c+1..n} (1 - k / i)."""

from __future__ import annotations

from typing import Dict, Iterable, Mapping, Sequence

KS = (1, 10, 100)


def pass_at_k(n: int, c: int, k: int) -> float:
    if not 0 <= c <= n:
        raise ValueError(f"{c} passing samples out of {n}: need 0 <= passing <= samples")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} from {n} samples: k must be in 1..{n} (draw more samples)")
    if n - c < k:
        return 1.0  # every draw of k holds a pass
    failing_draws = 1.0
    for i in range(n - c + 1, n + 1):
        failing_draws *= 1.0 - k / i
    return 1.0 - failing_draws


def pass_at_k_table(passed_by_task: Mapping[str, Sequence[bool]],
                    ks: Iterable[int] = KS) -> Dict[str, float]:
    """{"pass@k": mean over tasks} for every k that each task's sample count allows."""
    if not passed_by_task:
        raise ValueError("no tasks to score")
    fewest = min(len(passed) for passed in passed_by_task.values())
    return {f"pass@{k}": sum(pass_at_k(len(p), sum(p), k) for p in passed_by_task.values())
            / len(passed_by_task) for k in ks if k <= fewest}
