"""The findings document's verdicts and its studies' configuration."""

import pandas as pd

from study.cli import RUN_CONFIGS, build_parser
from study.flags import config_from_flags
from study.config import RunConfig
from study.design import SEARCHED, StudyDesign, describe_space, study_config
from study.experiments.findings import STUDIES, TEN_SEEDS, configs, verdicts
from study.reliability import clopper_pearson


def table(rows):
    columns = ["init_scale", "leak", "sub", "n_seeds", "mean", "worst", "best", "n_trained", "n_diverged"]
    frame = pd.DataFrame([dict(zip(columns, r)) for r in rows])
    bounds = [clopper_pearson(k, n) for k, n in zip(frame["n_trained"], frame["n_seeds"])]
    return frame.assign(trained_low=[low for low, _ in bounds], trained_high=[high for _, high in bounds])


def test_verdicts_follow_the_numbers():
    fragile_and_collapsed = table([(1.0, 0.2, 0.4, 10, 0.5, 0.1, 0.84, 6, 4), (1.0, 0.05, 0.9, 10, 0.1, 0.09, 0.11, 0, 10),
                                   (1.0, 0.05, 0.4, 10, 0.84, 0.83, 0.85, 10, 0)])
    lines = verdicts(fragile_and_collapsed)
    assert lines[0].startswith("**(.2, .4) is seed-fragile: holds.** 6 of 10 seeds trained (exact 95% CI 0.26-0.88)")
    assert lines[1].startswith("**(.05, .9) collapses: holds.** 0 of 10 seeds trained (exact 95% CI 0.00-0.31")
    assert len(lines) == 2  # no "most reliable" without a test: the report's comparisons say that

    robust = table([(1.0, 0.2, 0.4, 10, 0.84, 0.83, 0.85, 10, 0), (1.0, 0.05, 0.9, 10, 0.6, 0.2, 0.8, 7, 3)])
    lines = verdicts(robust)
    assert "seed-fragile: does not hold" in lines[0] and "collapses: does not hold" in lines[1]


def test_findings_studies_are_the_same_as_the_command_line_ones():
    """So that a study started with `python -m study search` is continued, not refused, by findings."""
    for entry in STUDIES:
        args = build_parser().parse_args(["search", "--name", entry.name, "--leak", describe_space(entry.leak),
                                          "--sub", describe_space(entry.sub), "--seeds", describe_space(TEN_SEEDS),
                                          "--epochs", str(entry.epochs)])
        cli_design = config_from_flags(StudyDesign, args)
        cli_run = RunConfig(*(config_from_flags(cls, args, skip=SEARCHED + ("seed",)) for cls in RUN_CONFIGS))
        _, design, run = configs(entry)
        assert study_config(design, run) == study_config(cli_design, cli_run)


def test_epoch_comparison_reports_seed_counts_per_setting():
    from study.experiments.findings import epoch_comparison

    def full(rows):
        frame = table(rows)
        return frame.assign(trained_mean=[0.84 if k else float("nan") for k in frame["n_trained"]])

    one = full([(1.0, 0.2, 0.4, 10, 0.6, 0.07, 0.84, 7, 3), (1.0, 0.05, 0.9, 10, 0.1, 0.09, 0.11, 0, 10)])
    three = full([(1.0, 0.2, 0.4, 10, 0.6, 0.07, 0.87, 8, 2)])
    (line,) = epoch_comparison(one, three)
    assert line.startswith("(0.2, 0.4): 7 of 10 trained after 1 epoch, 8 of 10 after 3 (+1 seeds)")
