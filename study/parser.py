"""The command line's commands and flags: one subcommand per command, its flags made from the
configuration dataclasses (`study.flags`). `study.cli` runs the command the parsed arguments name
(`args.command`, and `args.bench` under `bench`).

`work` joins a study whose design is stored: it takes the machine's flags only, and every design
flag is refused in one line that names it (`RefusedFlag`), not the generic "unrecognized arguments".
"""

from __future__ import annotations

import argparse
import dataclasses

from study import axes
from study.config import MACHINE_LOCAL, DataConfig, ModelConfig, OptimConfig, TrainConfig
from study.design import DynamicsDesign, MachineConfig, StudyDesign
from study.flags import EXIT_BAD_INPUT, OneLineParser, add_config_flags, as_flags, int_tuple, words
from study.ladder import EdgeDesign
from study.place import StudyPlace
from study.views import EXPORT_FORMATS

PROG = "python -m study"

RUN_CONFIGS = (DataConfig, ModelConfig, OptimConfig, TrainConfig)
SEARCH_CONFIGS = (StudyPlace, StudyDesign, MachineConfig)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Which initialisations and GeneralRelu shapes train, "
                                                  "and how reliably across seeds.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    train = commands.add_parser("train", help="train one configuration and print its result")
    for cls in RUN_CONFIGS:
        add_config_flags(train, cls)
    train.add_argument("--json", action="store_true", help="print the result as one JSON object")
    train.add_argument("--history", action="store_true",
                       help="with --json: include every recorded step's statistics")

    search = commands.add_parser("search", help="run (or continue) a study over " + ", ".join(axes.NAMES))
    for cls in SEARCH_CONFIGS:
        add_config_flags(search, cls)
    for cls in RUN_CONFIGS:
        add_config_flags(search, cls, skip=axes.NAMES + ("seed",))  # each trial's own
    search.set_defaults(resumable=True)

    edge = commands.add_parser("edge", help="the largest learning rate at which each setting trains reliably")
    for cls in (StudyPlace, EdgeDesign, MachineConfig):
        add_config_flags(edge, cls)
    for cls in RUN_CONFIGS:
        add_config_flags(edge, cls, skip=axes.NAMES + ("seed",))
    edge.add_argument("--out", help="directory of edge.csv and its pictures (default: studies/NAME)")
    edge.add_argument("--create-only", action="store_true",
                      help="store the design and train nothing: machines join with `work`")
    edge.set_defaults(resumable=True)

    dynamics = commands.add_parser("dynamics", help="each seed's first steps (loss, lambda_max, lr x lambda_max / "
                                                    "(2 (1 + momentum))) and its outcome: trained, catapult, "
                                                    "diverged or stalled")
    add_config_flags(dynamics, StudyPlace)
    add_config_flags(dynamics, DynamicsDesign, skip=("sampler", "objective", "n_trials"))
    add_config_flags(dynamics, MachineConfig)
    for cls in RUN_CONFIGS:
        add_config_flags(dynamics, cls, skip=axes.NAMES + ("seed",))
    dynamics.add_argument("--json", action="store_true",
                          help="print one JSON object per seed and step, then one per seed with its outcome")
    dynamics.set_defaults(resumable=True)

    create = commands.add_parser("create", help="store a study's design and train nothing: machines join it "
                                                "with work (an edge search: edge --create-only)")
    for cls in (StudyPlace, StudyDesign):
        add_config_flags(create, cls)
    for cls in RUN_CONFIGS:
        add_config_flags(create, cls, skip=axes.NAMES + ("seed",) + MACHINE_LOCAL)

    work = commands.add_parser("work", help="join a created study from this machine: its design is read from "
                                            "the storage, only this machine's flags are given")
    add_config_flags(work, StudyPlace)
    add_config_flags(work, MachineConfig)
    add_config_flags(work, DataConfig, skip=("n_val", "split_seed"))
    add_config_flags(work, TrainConfig, skip=tuple(f for f in _field_names(TrainConfig) if f != "device"))
    work.add_argument("--out", help="an edge search's edge.csv and pictures (default: studies/NAME)")
    taken = {option for action in work._actions for option in action.option_strings}
    for option in sorted({option for command in (search, edge, dynamics) for action in command._actions
                          for option in action.option_strings} - taken):
        work.add_argument(option, action=RefusedFlag, nargs="?", help=argparse.SUPPRESS)
    work.set_defaults(resumable=True)

    heatmaps = commands.add_parser("heatmaps", help="draw a stored study's heatmaps")
    add_config_flags(heatmaps, StudyPlace)
    heatmaps.add_argument("--out", help="output directory (default: studies/NAME beside the database)")
    heatmaps.add_argument("--x", default="leak", help=f"axis across: one of {', '.join(axes.NAMES)} (default: leak)")
    heatmaps.add_argument("--y", default="sub", help="axis up (default: sub); other axes that vary get a panel each")
    heatmaps

    report = commands.add_parser("report", help="write a stored study's report.md: numbers, intervals, findings")
    add_config_flags(report, StudyPlace)
    report.add_argument("--out", help="output directory (default: studies/NAME beside the database)")
    report

    export = commands.add_parser("export", help="write a stored study's tables: per seed and per setting")
    add_config_flags(export, StudyPlace)
    export.add_argument("--format", choices=EXPORT_FORMATS, default="csv", help="csv or json (default: csv)")
    export.add_argument("--out", help="output directory (default: studies/NAME beside the database)")
    export

    depth = commands.add_parser("depth", help="signal propagation through a deep MLP at initialisation, "
                                              "measured in float64 against the mean-field prediction")
    depth.add_argument("--depth", type=int, default=30, help="hidden layers (default: 30)")
    depth.add_argument("--width", type=int, default=512, help="units per hidden layer (default: 512)")
    depth.add_argument("--setting", action="append", type=setting_pair, metavar="LEAK,SUB",
                       help="a GeneralRelu setting; repeat for several (default: ReLU and the lesson's)")
    depth.add_argument("--init-scale", type=float, default=1.0, help="Kaiming multiplier (default: 1)")
    depth.add_argument("--bias-init", default="default", help="default (PyTorch's) or zero")
    depth.add_argument("--seeds", type=int_tuple, default=(0, 1, 2), help="seeds, comma separated (default: 0,1,2)")
    depth.add_argument("--batch", type=int, default=256, help="FashionMNIST images in the batch (default: 256)")
    depth.add_argument("--out", default="studies/depth", help="output directory (default: studies/depth)")
    add_config_flags(depth, DataConfig)
    depth

    sharpness = commands.add_parser("sharpness", help="the loss Hessian's largest eigenvalue at initialisation "
                                                      "(and along the first steps), per seed")
    for cls in RUN_CONFIGS:
        add_config_flags(sharpness, cls, skip=("seed",))
    sharpness.add_argument("--seeds", type=int_tuple, default=(0,), help="seeds, comma separated (default: 0)")
    sharpness.add_argument("--steps", type=int, default=0,
                           help="also after each of the first K optimiser steps (default: 0, initialisation only)")
    sharpness.add_argument("--json", action="store_true", help="print one JSON object per seed and step")
    sharpness

    findings = commands.add_parser("findings", help="run (or resume) the findings studies and write findings.md")
    findings.add_argument("--quick", action="store_true",
                          help="a small MLP and grid, minutes instead of about 90: for trying the command")
    findings.add_argument("--out", help="directory of findings.md and its figures "
                                        "(default: docs; studies/findings-quick with --quick)")
    add_config_flags(findings, MachineConfig)
    findings.set_defaults(resumable=True)

    bench = commands.add_parser("bench", help="benchmarks: print a table of timings (benchmarks/)")
    benches = bench.add_subparsers(dest="bench", required=True, parser_class=OneLineParser)
    study_speed = benches.add_parser("study", help="model-epochs per second of the ways to train a study")
    study_speed.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    study_speed.add_argument("--models", type=words, default=("mlp", "cnn"), help="comma separated (default: mlp,cnn)")
    study_speed.add_argument("--rows", type=words, default=None, help="comma separated of a,b,c,d8,d32,e and quick "
                             "(the quick study against plain PyTorch epochs; default: all)")
    benches.add_parser("kernel", help="the fused kernel: GPU timings on CUDA, the analytic model always")
    edge_methods = benches.add_parser("edge", help="the edge's two methods on known curves: coverage, error, trainings")
    edge_methods.add_argument("--reps", type=int, default=200, help="repetitions per curve (default: 200)")
    edge_methods.add_argument("--seed", type=int, default=0, help="seed of the simulation (default: 0)")

    dashboard = commands.add_parser("dashboard", help="serve optuna-dashboard on a stored study")
    add_config_flags(dashboard, StudyPlace)
    dashboard.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    dashboard.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    dashboard.add_argument("--artifacts", help=as_flags(machine_help("artifacts")))
    return parser



class RefusedFlag(argparse.Action):
    """A design flag given to `work`: refused in one line that names it."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.exit(EXIT_BAD_INPUT, f"{parser.prog}: error: {option_string} is part of the study's design, stored when it was "
                       "created: work reads it from the storage; leave it out (another design is another study)\n")


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def machine_help(name: str) -> str:
    return next(f.metadata["help"] for f in dataclasses.fields(MachineConfig) if f.name == name)


def setting_pair(text: str) -> tuple[float, float]:
    try:
        leak, sub = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give LEAK,SUB like 0.1,0.4") from None
    return leak, sub
