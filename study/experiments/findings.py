"""docs/findings.md: the lesson's observations put to a measurement, produced by one command.

`python -m study findings` runs (or, if they exist, continues: the same trials are not trained twice)
two studies of the lesson's CNN with its optimiser (SGD lr 0.2, momentum 0.85, batch 1024), ten seeds
per setting: a grid around the lesson's settings at one epoch, and its neighbourhood of the
fragile settings at three epochs; then the depth experiments; then writes the document with the
numbers, figures, the command, the machine and the date. Every verdict is computed from the tables.
"""

from __future__ import annotations

import datetime
import shutil
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
import torch

from study.config import DataConfig, OptimConfig, RunConfig
from study.design import TRAIN_THRESHOLD, StudyDesign, StudyPlace
from study.data import load_fashion_mnist
from study.experiments.depth import DEPTH_INITS, last_to_first_std, run_depth
from study.plots import save_figures, study_figures
from study.report import findings, lesson_rows, markdown_table, setting_name, setting_table
from study.results import seed_frame, study_threshold, training_minutes, wall_time
from study.runner import open_search
from study.training import device_name

TEN_SEEDS = tuple(range(10))
COMMAND = "python -m study findings"


@dataclass(frozen=True)
class FindingsStudy:
    name: str
    leak: tuple[float, ...]
    sub: tuple[float, ...]
    epochs: int
    purpose: str


STUDIES = (
    FindingsStudy("findings-1epoch", (0, 0.05, 0.1, 0.2, 0.5), (0, 0.4, 0.7, 0.9), 1,
                  "the lesson's settings and a grid around them, one epoch"),
    FindingsStudy("findings-3epoch", (0.05, 0.1, 0.2), (0.4, 0.9), 3,
                  "the seed-fragile neighbourhood, three epochs: does longer training rescue it?"),
)


def configs(entry: FindingsStudy) -> tuple[StudyPlace, StudyDesign, RunConfig]:
    """The lesson's CNN and optimiser are the defaults of `RunConfig`, as for `python -m study search`."""
    design = StudyDesign(leak=entry.leak, sub=entry.sub, seeds=TEN_SEEDS)
    return StudyPlace(name=entry.name), design, RunConfig(optim=OptimConfig(epochs=entry.epochs))


def verdicts(table: pd.DataFrame) -> list[str]:
    """The lesson's observations, each judged from the table with its evidence."""
    def row(leak, sub):
        hit = table[(table["leak"].round(4) == leak) & (table["sub"].round(4) == sub) & (table["init_scale"] == 1)]
        return hit.to_dict("records")[0] if len(hit) else None

    lines = []
    fragile = row(0.2, 0.4)
    if fragile is not None:
        n, k = fragile["n_seeds"], fragile["n_trained"]
        holds = 0 < k < n
        lines.append(f"**(.2, .4) is seed-fragile: {'holds' if holds else 'does not hold'}.** {k} of {n} seeds "
                     f"trained (exact 95% CI {fragile['trained_low']:.2f}-{fragile['trained_high']:.2f}); seeds "
                     f"span {fragile['worst']:.3f} to {fragile['best']:.3f}.")
    collapse = row(0.05, 0.9)
    if collapse is not None:
        n, k = collapse["n_seeds"], collapse["n_trained"]
        lines.append(f"**(.05, .9) collapses: {'holds' if k == 0 else 'does not hold'}.** {k} of {n} seeds trained "
                     f"(exact 95% CI {collapse['trained_low']:.2f}-{collapse['trained_high']:.2f}; best seed "
                     f"{collapse['best']:.3f}, {collapse['n_diverged']} diverged).")
    return lines


def write_findings(doc_dir: Path = Path("docs"), progress: bool = True) -> Path:
    figures = doc_dir / "findings"
    figures.mkdir(parents=True, exist_ok=True)
    sections, tables = [], []
    for entry in STUDIES:
        study = open_search(*configs(entry), progress=progress).work()
        sections.append(_study_section(entry, study, figures))
        tables.append(setting_table(study))
    sections.append(_epoch_comparison(*tables))

    batch = load_fashion_mnist(DataConfig()).x_train[:512]
    profiles, depth_paths = run_depth(batch, figures / "depth", progress=progress)

    lines = [
        "# Findings: which GeneralRelu settings train, and how reliably across seeds",
        "",
        f"Produced by `{COMMAND}` on {datetime.date.today().isoformat()}, {_machine()}, torch {torch.__version__}. "
        "FashionMNIST (50,000 train / 10,000 validation / 10,000 test), the fast.ai lesson's CNN with Kaiming "
        "init (a = leak), SGD lr 0.2, momentum 0.85, batch 1024; ten seeds per setting (each seed sets the "
        f"initial weights and the data order). A seed *trained* when its validation accuracy exceeds {TRAIN_THRESHOLD} "
        "(chance: 0.1). The share of seeds that trained carries its exact (Clopper-Pearson) 95% interval; the "
        "accuracy of the trained seeds its 95% t-interval.",
        "",
    ] + sections + [
        "## Why: signal propagation through depth at initialisation",
        "",
        "A 50-layer MLP of width 256 with ReLU, untrained, on 512 FashionMNIST images (three seeds). "
        "Ratio of the last hidden layer's activation std to the first's:",
        "",
        "| init | std last / first |",
        "|---|---|",
    ] + [f"| {init} | {last_to_first_std(profiles, init):.3g} |" for init in DEPTH_INITS] + [
        "",
        "1/sqrt(fan_in) (LeCun) halves the variance at every ReLU layer, so the signal vanishes; Kaiming's "
        "sqrt(2) gain keeps it at order 1, and LSUV sets it to 1 on the batch. Scaling Kaiming by init_scale "
        "multiplies the std by init_scale at every layer: only a narrow ridge around 1 neither vanishes nor "
        "explodes. The spectra show a second failure that variance alone does not: with depth the centred "
        "activations concentrate on a few directions (effective rank at layer 1 vs layer 50 in the legend).",
        "",
        f"![std through depth](findings/depth/{depth_paths['depth_std'].name})",
        f"![init_scale x leak](findings/depth/{depth_paths['depth_std_sweep'].name})",
        f"![spectra](findings/depth/{depth_paths['depth_spectra'].name})",
        "",
        "Numbers behind the figures: `findings/depth/depth_profile.csv`, `findings/depth/depth_std_sweep.csv`.",
    ]
    path = doc_dir / "findings.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def epoch_comparison(one: pd.DataFrame, three: pd.DataFrame) -> list[str]:
    """Per setting in both tables: seeds trained after one epoch and after three."""
    keys = ["init_scale", "leak", "sub"]
    both = one.merge(three, on=keys, suffixes=("_1", "_3"))
    lines = []
    for r in both.to_dict("records"):
        change = ("the same seeds' count" if r["n_trained_1"] == r["n_trained_3"]
                  else f"{r['n_trained_3'] - r['n_trained_1']:+d} seeds")
        lines.append(f"{setting_name(r)}: {r['n_trained_1']} of {r['n_seeds_1']} trained after 1 epoch, "
                     f"{r['n_trained_3']} of {r['n_seeds_3']} after 3 ({change}); mean of the trained seeds "
                     f"{_trained_mean(one, r)} -> {_trained_mean(three, r)}.")
    return lines


def _trained_mean(table: pd.DataFrame, setting: dict) -> str:
    row = table[(table["leak"] == setting["leak"]) & (table["sub"] == setting["sub"])
                & (table["init_scale"] == setting["init_scale"])].to_dict("records")[0]
    return "none" if row["n_trained"] == 0 else f"{row['trained_mean']:.3f}"


def _epoch_comparison(one: pd.DataFrame, three: pd.DataFrame) -> str:
    lines = ["## One epoch against three", "",
             "Does training longer rescue the seeds that failed? Settings in both studies (same seeds):", ""]
    comparison = epoch_comparison(one, three)
    lines += [f"- {line}" for line in comparison]
    both = one.merge(three, on=["init_scale", "leak", "sub"], suffixes=("_1", "_3"))
    same_counts = bool(len(both)) and (both["n_trained_1"] == both["n_trained_3"]).all()
    failures_diverged = (both["n_diverged_3"] == both["n_seeds_3"] - both["n_trained_3"]).all()
    if same_counts and failures_diverged:
        lines += ["", "No: for every setting here as many seeds trained after three epochs as after one, and every "
                  "seed that failed had diverged (its loss crossed the bound and the run stopped); the extra "
                  "epochs only improved the seeds that already trained."]
    return "\n".join(lines) + "\n"


def _study_section(entry: FindingsStudy, study: optuna.Study, figures: Path) -> str:
    out = figures / entry.name
    if out.exists():
        shutil.rmtree(out)
    pictures = save_figures(study_figures(study), out)
    table = setting_table(study)
    wall = wall_time(study)
    lines = [f"## {entry.epochs} epoch{'s' if entry.epochs > 1 else ''}: {entry.purpose}", "",
             f"Study `{entry.name}`: leak {{{entry.leak}}} x sub {{{entry.sub}}}, init_scale 1, {len(table)} settings "
             f"x 10 seeds: {training_minutes(study):.0f} min of training, {wall[1] if wall else 0:.0f} min of wall time on a machine "
             f"shared with other work{_resumed(study)}.", ""]
    lines += [f"- {v}" for v in verdicts(table)]
    lines += ["", "Generated findings:", ""] + [f"- {s}" for s in findings(table, seed_frame(study),
                                                                             study_threshold(study))]
    lesson = lesson_rows(table)
    if not lesson.empty:
        lines += ["", "The lesson's settings:", "", markdown_table(lesson)]
    lines += ["", "All settings, by share of seeds trained:", "",
              markdown_table(table.assign(share=table["n_trained"] / table["n_seeds"])
                             .sort_values(["share", "trained_mean"], ascending=False)), ""]
    wanted = ("heatmap_frac_trained", "heatmap_mean_val_acc", "heatmap_worst_acc", "lesson_settings_seeds")
    lines += [f"![{p.stem}](findings/{entry.name}/{p.name})" for p in pictures if p.stem in wanted]
    return "\n".join(lines) + "\n"


def _resumed(study: optuna.Study) -> str:
    failed = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)))
    return f"; {failed} trial{'s' if failed > 1 else ''} stopped and resumed, finished seeds reused" if failed else ""


def _machine() -> str:
    gpu = device_name(torch.device("cuda")) if torch.cuda.is_available() else "no GPU"
    return f"{device_name(torch.device('cpu'))}, {torch.get_num_threads()} threads, {gpu}"
