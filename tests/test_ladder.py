"""The edge search's design, ladder and bisection, without training."""

import math

import pytest

from study.axes import Range
from study.errors import FieldError
from study.ladder import Bisection, EdgeDesign, bisection
from study.sequential import RELIABLE, UNDECIDED, UNRELIABLE


def test_a_log_range_is_cut_into_rungs_a_constant_factor_apart():
    ladder = EdgeDesign(lr=Range(0.025, 1.6, log=True)).ladder()
    assert len(ladder) == 13 and ladder[0] == 0.025 and ladder[-1] == pytest.approx(1.6)
    assert all(b / a == pytest.approx(math.sqrt(2), rel=1e-5) for a, b in zip(ladder, ladder[1:]))
    assert EdgeDesign(lr=Range(0.1, 1, log=True), lr_step=2).ladder() == (0.1, 0.2, 0.4, 0.8)
    assert EdgeDesign(lr=(0.3, 0.1, 0.2)).ladder() == (0.1, 0.2, 0.3)  # a list, sorted


@pytest.mark.parametrize("fields, field, problem", [
    (dict(lr=(0, 0.1)), "lr", "values must be positive, got 0"),
    (dict(lr=Range(1.6, 0.025, log=True)), "lr", "empty or inverted"),
    (dict(lr=(0.2,)), "lr", "gives one rung"),
    (dict(lr=Range(0.1, 0.12, log=True)), "lr", "gives one rung"),
    (dict(lr_step=1.0), "lr_step", "must be a factor > 1"),
    (dict(reliability=1.5), "reliability", "must be in (0, 1)"),
    (dict(unreliability=0.95), "unreliability", "must be in (0, `reliability`)"),
    (dict(max_seeds=0), "max_seeds", "must be >= 1"),
    (dict(error_rate=0.5), "error_rate", "must be in (0, 0.5)"),
    (dict(leak=Range(0, 0.5)), "leak", "an edge search takes a list"),
    (dict(momentum=(0.9, 1.0)), "momentum", "values must be in [0, 1)"),
])
def test_bad_designs_are_refused_naming_the_field(fields, field, problem):
    with pytest.raises(FieldError) as refused:
        EdgeDesign(**fields)
    assert refused.value.field == field and problem in refused.value.problem


def search_edge(truth: int, n_rungs: int) -> tuple[Bisection, int]:
    """Bisection against a setting that is reliable up to rung `truth` (-1: at none): the final
    state and the probes it took."""
    verdicts = {}
    while (rung := bisection(verdicts, n_rungs).next_rung) is not None:
        verdicts[rung] = RELIABLE if rung <= truth else UNRELIABLE
    return bisection(verdicts, n_rungs), len(verdicts)


@pytest.mark.parametrize("n_rungs", [2, 5, 13])
def test_bisection_finds_the_edge_in_logarithmically_many_probes(n_rungs):
    for truth in range(-1, n_rungs):
        state, probes = search_edge(truth, n_rungs)
        assert (state.stable, state.unstable) == (truth, truth + 1)
        assert probes <= math.ceil(math.log2(n_rungs + 1))


def test_undecided_ends_the_search_above_it_like_unreliable():
    state = bisection({6: RELIABLE, 9: UNDECIDED, 7: RELIABLE, 8: UNDECIDED}, 13)
    assert (state.stable, state.unstable, state.next_rung) == (7, 8, None)
    assert bisection({}, 13).next_rung == 6  # the first probe: the middle rung


def test_a_probe_adds_the_fewest_seeds_that_could_decide_lowest_first_and_none_once_decided():
    design = EdgeDesign(max_seeds=20)  # Wald's SPRT of 0.9 against 0.6
    test = design.test()
    assert design.seeds_to_train({}) == list(range(test.seeds_to_verdict(0, 0)))
    # A probe that reused seeds 0 and 2 from a failed trial fills the gap first: seeds are shared.
    held = {0: True, 2: True}
    following = design.seeds_to_train(held)
    assert following[0] == 1 and following == sorted(following)
    assert len(following) == test.seeds_to_verdict(2, 2)
    decided = {seed: True for seed in range(next(n for n in range(1, 21) if test.verdict(n, n) == RELIABLE))}
    assert design.seeds_to_train(dict(list(decided.items())[:-1]))  # one short of the verdict
    assert design.seeds_to_train(decided) == []
    # Every seed used up: the probe stops undecided.
    assert design.seeds_to_train({seed: seed % 3 != 0 for seed in range(20)}) == []
