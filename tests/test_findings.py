"""The findings document: its rules and tests on made-up seeds, its studies the same as the command
line's, and (slow) `findings --quick` end to end, each verdict recomputed from the stored trials."""

import math
import re

import numpy as np
import optuna
import pandas as pd
import pytest
from scipy import stats

from conftest import run_cli
from study.cli import RUN_CONFIGS, build_parser
from study.config import RunConfig
from study.axes import NAMES as SEARCHED
from study.design import DynamicsDesign, study_config
from study.place import StudyPlace
from study.experiments.findings import FULL, QUICK, claims
from study.flags import config_from_flags
from study.ladder import EdgeDesign
from study.results import seed_frame


def outcomes(name, trained, accs=None):
    accs = accs or [0.8 if t else 0.1 for t in trained]
    return claims.Outcomes(name, {seed: (t, a, None) for seed, (t, a) in enumerate(zip(trained, accs))})


@pytest.mark.parametrize("k, n, verdict", [
    (40, 40, "holds"), (20, 20, "not established with 20 seeds; at least 0.83 of seeds train"),
    (15, 20, "not established with 20 seeds; at least 0.50 of seeds train"), (12, 20, "does not hold"),  # 0.509
    (5, 5, "not established with 5 seeds; at least 0.47 of seeds train")])  # 0.478 rounded down
def test_trains_reliably_holds_only_where_the_whole_interval_is_at_least_0_9(k, n, verdict):
    low, high = stats.binomtest(k, n).proportion_ci(method="exact")
    verdict_text = claims.trains_reliably("s", outcomes("x", [True] * k + [False] * (n - k))).verdict
    assert verdict_text == (verdict if verdict in ("holds", "does not hold") else verdict + " (the interval's lower end)")
    assert (verdict == "holds") == (low >= 0.9) and (verdict == "does not hold") == (high < 0.9)
    assert claims.seeds_to_hold() == 36  # 35 of 35 gives a lower end of 0.89997


def test_more_reliable_is_mcnemars_exact_test_on_shared_seeds():
    better = outcomes("a", [True] * 18 + [False] * 2)
    worse = outcomes("b", [True] * 8 + [False] * 12)
    v = claims.more_reliable("a beats b", better, worse)
    assert v.p == pytest.approx(stats.binomtest(10, 10, 0.5).pvalue) and v.verdict == "holds"
    v = claims.more_reliable("b beats a", worse, better)
    assert v.verdict == "does not hold"
    close = claims.more_reliable("a beats c", better, outcomes("c", [True] * 17 + [False] * 3))
    assert close.verdict == "not established with 20 seeds"


def test_holm_turns_a_lone_small_p_into_not_established_when_many_are_tested():
    better = outcomes("a", [True] * 14 + [False] * 6)
    worse = outcomes("b", [True] * 8 + [False] * 12)
    single = claims.more_reliable("a beats b", better, worse)
    assert single.p < 0.05 and single.verdict == "holds"
    adjusted = claims.with_holm([single] * 4)
    assert all(v.verdict.startswith("not established with 20 seeds") for v in adjusted)
    assert "Holm" in adjusted[0].test


def test_more_accurate_is_wilcoxons_exact_test_on_the_seeds_both_trained():
    a = outcomes("a", [True] * 10, [0.85 + 0.001 * i for i in range(10)])
    b = outcomes("b", [True] * 9 + [False], [0.80 + 0.002 * i for i in range(10)])
    v = claims.more_accurate("a above b", a, b)
    assert v.n == 9 and "exact" in v.test
    every_pattern = stats.wilcoxon([0.05 - 0.001 * i for i in range(9)], method=stats.PermutationMethod(n_resamples=np.inf))
    assert v.p == pytest.approx(every_pattern.pvalue)


def test_accuracy_on_the_test_file_compares_the_same_images():
    a = claims.Outcomes("a", {s: (True, 0.9, None) for s in range(6)}, {s: 0.80 for s in range(6)})
    b = claims.Outcomes("b", {s: (True, 0.8, None) for s in range(6)}, {s: 0.82 for s in range(6)})
    assert claims.more_accurate("a above b", a, b).verdict == "holds"  # on each one's validation images
    on_test = claims.more_accurate("a above b", a, b, on="test")
    assert on_test.verdict == "does not hold" and "test-file accuracy" in on_test.evidence


def test_failures_are_split_into_divergences_with_their_step_and_stalls():
    setting = claims.Outcomes("x", {0: (True, 0.8, None), 1: (False, 0.1, 3), 2: (False, 0.3, None), 3: (False, 0.1, 12)})
    assert setting.failures() == "2 diverged (at step 3, 12), 1 stalled below the threshold"
    frame = pd.DataFrame({"trained": [True, False, False, False], "diverged_step": [None, 3, None, 12]})
    assert claims.failure_modes(frame) == ("of 3 failed seeds, 2 diverged (at steps 3-12, median 7.5) and 1 stalled "
                                           "below the threshold")


def test_monotonicity_counts_probe_pairs_where_a_higher_rate_trained_more():
    rows = [(lr, trained) for lr, k in ((0.1, 4), (0.2, 0), (0.4, 4)) for trained in [True] * k + [False] * (4 - k)]
    seeds = pd.DataFrame([{"leak": 0.0, "sub": 0.0, "init_scale": 1.0, "momentum": 0.85, "warmup_steps": 0.0,
                           "lr": lr, "trained": trained} for lr, trained in rows])
    # 0.4 (4/4) above 0.2 (0/4): one pair, significant (Fisher one-sided p = 1/70); 0.1 against 0.4 ties.
    assert claims.monotonicity(seeds) == {"pairs": 3, "higher_trained_more": 1, "significant": 1}


@pytest.mark.parametrize("plan", [FULL, QUICK], ids=["full", "quick"])
def test_the_edge_studies_are_the_ones_the_edge_command_makes(plan):
    """So `python -m study edge` started by hand on the same name is continued by findings, not refused."""
    design = plan.edge_studies()["findings-edge"]
    flags = ["edge", "--name", "findings-edge", "--storage", plan.storage,
             "--leak", ",".join(map(str, plan.grid_leak)), "--sub", ",".join(map(str, plan.grid_sub)),
             "--lr", f"{design.lr.low}:{design.lr.high}:log", "--max-trainings", str(plan.max_trainings),
             "--precision", str(plan.precision), "--n-val", "0", "--model", plan.run.model.model,
             "--widths", ",".join(map(str, plan.run.model.widths))]
    if plan.run.train.max_steps:
        flags += ["--max-steps", str(plan.run.train.max_steps)]
    args = build_parser().parse_args(flags)
    cli_design = config_from_flags(EdgeDesign, args)
    cli_run = RunConfig(*(config_from_flags(cls, args, skip=SEARCHED + ("seed",)) for cls in RUN_CONFIGS))
    assert study_config(design, plan.run) == study_config(cli_design, cli_run)
    assert config_from_flags(StudyPlace, args) == plan.place("findings-edge")


def test_the_dynamics_studies_are_the_ones_the_dynamics_command_makes():
    """Placed at the grid's lr90 and lr50 to two digits; the lesson's lr added for (.2, .4); the warm-up
    study at lr50 only; and each the same as `python -m study dynamics` with the same flags."""
    grid = pd.DataFrame([{"leak": leak, "sub": sub, "lr90": 0.1 + leak, "lr50": 0.2345 + leak}
                         for leak, sub in FULL.warmup_settings])
    studies = FULL.dynamics_studies(grid)
    assert studies["findings-dynamics-0-0"].lr == (0.1, 0.23)
    assert studies["findings-dynamics-0.2-0.4"].lr == (0.2, 0.3, 0.43)  # 0.2: the lesson's
    warm = studies["findings-dynamics-warmup-0.1-0.4"]
    assert warm.lr == (0.33,) and warm.warmup_steps == (20,)
    args = build_parser().parse_args(["dynamics", "--leak", "0.1", "--sub", "0.4", "--lr", "0.33", "--warmup-steps",
                                      "20", "--momentum", "0.85", "--steps", "10",
                                      "--seeds", ",".join(map(str, range(FULL.seeds)))])
    assert config_from_flags(DynamicsDesign, args) == warm


def _table(text: str, heading: str) -> list[list[str]]:
    """The rows of the section's table of verdicts (the one headed "| statement")."""
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    verdicts = section.split("| statement", 1)[1].split("\n\n", 1)[0]
    rows = [line for line in verdicts.splitlines()[1:] if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def _holm(ps):
    order = sorted(range(len(ps)), key=ps.__getitem__)
    adjusted, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


@pytest.mark.slow
def test_findings_quick_writes_verdicts_that_a_recomputation_from_the_stored_trials_confirms(tmp_path):
    proc = run_cli("findings", "--quick", "--out", "out", "--workers", "1", cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "out" / "findings.md").read_text()
    assert "## 3. Momentum and init scale move the edge: laws" in text and "## Left for later" in text
    assert re.search(r"lr90 ~ \(1 - momentum\)\^alpha, alpha = -?\d", text)  # the law, fitted
    assert "## 7. What the first steps do" in text and "### Do the first steps go with failing?" in text
    for figure in ("edge_heatmap", "edge_curves", "sharpness", "signal", "first_steps"):
        assert f"findings/{figure}.png" in text and (tmp_path / "out" / "findings" / f"{figure}.png").stat().st_size
    storage = f"sqlite:///{tmp_path / 'studies' / 'findings-quick-3.db'}"

    def seeds(variant, setting):
        name = f"findings-{variant}-{setting[0]:g}-{setting[1]:g}"
        frame = seed_frame(optuna.load_study(study_name=name, storage=storage))
        return (dict(zip(frame["seed"], frame["val_acc"] > 0.5)), dict(zip(frame["seed"], frame["val_acc"])),
                dict(zip(frame["seed"], frame["test_acc"])))

    for heading, variant_of in (("## 2.", lambda name: "lesson"),
                                ("## 6.", lambda name: "zero-bias" if "zero biases" in name else "split-50k")):
        rows = _table(text, heading)
        assert rows
        recomputed = []  # (row, verdict rule or p)
        for statement, evidence, verdict, test in rows:
            names = [tuple(float(x) for x in m) for m in re.findall(r"\((\d[\d.]*), (\d[\d.]*)\)", evidence)]
            first = seeds("lesson", names[0])
            if test.startswith("exact interval against 0.9"):
                k, n = sum(first[0].values()), len(first[0])
                assert f"{k}/{n} trained" in evidence
                low, high = stats.binomtest(k, n).proportion_ci(method="exact")
                assert verdict.strip("*") == ("does not hold" if high < 0.9 else "holds" if low >= 0.9
                                              else f"not established with {n} seeds; at least "
                                                   f"{math.floor(low * 100) / 100:.2f} of seeds train (the interval's lower end)")
            elif test.startswith("exact interval against 0.5"):
                k, n = sum(first[0].values()), len(first[0])
                low, high = stats.binomtest(k, n).proportion_ci(method="exact")
                assert verdict.strip("*") == ("holds" if high < 0.5 else "does not hold" if low > 0.5
                                              else f"not established with {n} seeds")
            elif test.startswith("count of failed"):
                n = len(first[0])
                assert verdict.strip("*") == ("holds" if not all(first[0].values()) else
                                              f"no failure in {n} seeds (failure rate at most "
                                              f"{stats.binomtest(0, n).proportion_ci(method='exact').high:.2f})")
            else:
                second = seeds(variant_of(statement) if heading == "## 6." else "lesson", names[1])
                if test.startswith("McNemar"):
                    only_a = sum(first[0][s] and not second[0][s] for s in first[0])
                    only_b = sum(second[0][s] and not first[0][s] for s in first[0])
                    p = 1.0 if only_a + only_b == 0 else stats.binomtest(only_a, only_a + only_b).pvalue
                    recomputed.append((verdict, p, only_a - only_b, len(first[0]), test))
                elif "too few" not in test:
                    both = [s for s in first[0] if first[0][s] and second[0][s]]
                    images = 2 if heading == "## 6." else 1  # section 6 compares on the test file
                    differences = [first[images][s] - second[images][s] for s in both]
                    p = stats.wilcoxon(differences, method=stats.PermutationMethod(n_resamples=np.inf)).pvalue
                    nonzero = np.array([d for d in differences if d != 0])
                    side = float((np.sign(nonzero) * stats.rankdata(np.abs(nonzero))).sum()) if len(nonzero) else 0
                    recomputed.append((verdict, p, side, len(both), test))  # W+ - W-: the side the test found
        adjusted = _holm([p for _, p, _, _, _ in recomputed])
        for (verdict, p, direction, n, test), p_holm in zip(recomputed, adjusted):
            assert f"p = {p:.2g}" in test and f"Holm {p_holm:.2g}" in test
            expected = (f"not established with {n} seeds" if p >= 0.05 else None)
            if p < 0.05 <= p_holm:
                expected = f"not established with {n} seeds (after Holm's correction)"
            elif p_holm < 0.05:
                expected = "holds" if direction > 0 else "does not hold"
            assert verdict.strip("*") == expected, (test, verdict)

    # A second run trains nothing: every study is complete, the sharpness values are cached.
    trials = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    again = run_cli("findings", "--quick", "--out", "out", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)} == trials
