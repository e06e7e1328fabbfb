"""The sequential rule of the edge search: its decisions, and its error rates against its stated bounds."""

import numpy as np
import pytest

from study.sequential import RELIABLE, UNDECIDED, UNRELIABLE, Sprt


def test_the_default_rule_decides_as_the_readme_says():
    rule = Sprt()
    assert [rule.verdict(k, k) for k in range(1, 9)] == [None] * 7 + [RELIABLE]
    assert rule.verdict(0, 3) == UNRELIABLE and rule.verdict(2, 5) == UNRELIABLE
    assert rule.verdict(3, 6) is None  # 3 failures with 3 trained: not yet
    assert rule.verdict(15, 20) == UNDECIDED
    assert rule.seeds_to_verdict(0, 0) == 3  # three failures are the fastest verdict
    assert rule.seeds_to_verdict(7, 7) == 1


def simulate(rule: Sprt, p: float, runs: int, rng: np.random.Generator) -> dict[str, float]:
    """Verdict frequencies of `rule` over `runs` simulated settings that train each seed with probability p."""
    counts = {RELIABLE: 0, UNRELIABLE: 0, UNDECIDED: 0}
    outcomes = rng.random((runs, rule.max_seeds)) < p
    for row in outcomes:
        trained = 0
        for seeds, success in enumerate(row, start=1):
            trained += success
            verdict = rule.verdict(trained, seeds)
            if verdict:
                counts[verdict] += 1
                break
    return {key: value / runs for key, value in counts.items()}


@pytest.mark.parametrize("rule", [Sprt(), Sprt(0.8, 0.5, 0.1, 12), Sprt(0.95, 0.7, 0.05, 40)])
def test_simulated_error_rates_are_within_walds_bounds_and_the_exact_values(rule):
    """At p = reliable a wrong 'unreliable', and at p = unreliable a wrong 'reliable', happen at most
    error / (1 - error) of the time (Wald), and as often as the exact walk says (within 4 standard errors)."""
    rng, runs = np.random.default_rng(1), 20_000
    bound = rule.error / (1 - rule.error)
    for p, wrong in ((rule.reliable, UNRELIABLE), (rule.unreliable, RELIABLE)):
        simulated, exact = simulate(rule, p, runs, rng), rule.operating_characteristic(p)
        assert exact[wrong] <= bound
        assert simulated[wrong] <= bound + 4 * (bound * (1 - bound) / runs) ** 0.5
        for verdict in (RELIABLE, UNRELIABLE, UNDECIDED):
            se = max(exact[verdict] * (1 - exact[verdict]) / runs, 1 / runs) ** 0.5
            assert simulated[verdict] == pytest.approx(exact[verdict], abs=4 * se)
        assert sum(exact[v] for v in (RELIABLE, UNRELIABLE, UNDECIDED)) == pytest.approx(1.0)


def test_errors_fall_further_away_from_the_indifference_zone():
    rule = Sprt()
    assert rule.operating_characteristic(0.99)[UNRELIABLE] < rule.operating_characteristic(0.9)[UNRELIABLE]
    assert rule.operating_characteristic(0.3)[RELIABLE] < rule.operating_characteristic(0.6)[RELIABLE]
