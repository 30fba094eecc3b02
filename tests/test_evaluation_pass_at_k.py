"""pass@k: the product form equals counting, over every k-subset of n samples, those that hold a
pass; the table keeps the k that every task's sample count allows."""

from itertools import combinations

import pytest

from evaluation.pass_at_k import pass_at_k, pass_at_k_table


def brute_force(n: int, c: int, k: int) -> float:
    samples = [True] * c + [False] * (n - c)
    draws = list(combinations(range(n), k))
    return sum(any(samples[i] for i in draw) for draw in draws) / len(draws)


def test_pass_at_k_equals_enumeration_over_subsets():
    for n in range(1, 11):
        for c in range(n + 1):
            for k in range(1, n + 1):
                # Both are exact up to float rounding of a product of <= 10 factors.
                expected = brute_force(n, c, k)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_where_the_binomials_overflow_floats():
    # C(1000, 100) ~ 6e139 and C(990, 100): the ratio is fine, each binomial alone is not a float
    # anyone should divide. The product form gives 1 - prod_{i=991..1000} (1 - 100 / i).
    expected = 1.0
    for i in range(991, 1001):
        expected *= 1 - 100 / i
    assert pass_at_k(1000, 10, 100) == pytest.approx(1 - expected, rel=1e-12)
    assert pass_at_k(200, 0, 100) == 0.0 and pass_at_k(200, 101, 100) == 1.0


def test_table_keeps_the_k_the_sample_counts_allow():
    passed = {"HumanEval/0": [True] + [False] * 9, "HumanEval/1": [False] * 10}
    table = pass_at_k_table(passed)
    assert set(table) == {"pass@1", "pass@10"}  # 10 samples per task: no pass@100
    assert table["pass@1"] == pytest.approx((0.1 + 0.0) / 2)
    assert table["pass@10"] == pytest.approx((1.0 + 0.0) / 2)
    assert set(pass_at_k_table({"HumanEval/0": [True]})) == {"pass@1"}


def test_impossible_counts_are_refused():
    with pytest.raises(ValueError, match="k must be in 1..5"):
        pass_at_k(5, 1, 10)
    with pytest.raises(ValueError, match="need 0 <= passing <= samples"):
        pass_at_k(5, 6, 1)
