"""The command line: flags -> config dataclasses -> work -> printed results and exit codes.

Only this module (with `study/flags.py`, which makes the flags from the dataclasses' fields and
parses their strings into typed values) parses flags, prints for people and picks exit codes; it
is also the only place that chooses matplotlib's file-only backend (the Python API leaves
Jupyter's). Everything below raises `BadInput` for a problem the user can fix (one line on
stderr, exit code 2; a `FieldError` is shown with its flag's name) and `StorageFault` when the
database failed under a running study (one line, exit code 3). Ctrl-C (SIGINT) and SIGTERM are
requests that the work honours at its next safe point (`study.interrupts`): a study keeps what it
finished and the command exits 130 or 143 with the line that continues it. Everything printed passes
`study.masking.redact`, so no password reaches the terminal or a log.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Sequence

from study import api, axes, interrupts
from study.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from study.design import MachineConfig, StudyDesign
from study.errors import BadInput, FieldError, StorageFault, WorkerStopped
from study.flags import (EXIT_BAD_INPUT, OneLineParser, add_config_flags, as_flags, config_from_flags, flag_of,
                         int_tuple,
                         words)
from study.ladder import EdgeDesign
from study.masking import guard_output, mask_url, redact
from study.place import STORAGE_ENV, StudyPlace
from study.quiet import libraries_quiet
from study.views import EXPORT_FORMATS, check_axes

PROG = "python -m study"
EXIT_STORAGE_FAULT = 3
EXIT_INTERRUPTED = 130


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
    train.set_defaults(handler=run_train)

    search = commands.add_parser("search", help="run (or continue) a study over " + ", ".join(axes.NAMES))
    for cls in SEARCH_CONFIGS:
        add_config_flags(search, cls)
    for cls in RUN_CONFIGS:
        add_config_flags(search, cls, skip=axes.NAMES + ("seed",))  # each trial's own
    search.set_defaults(handler=run_search, resumable=True)

    edge = commands.add_parser("edge", help="the largest learning rate at which each setting trains reliably")
    for cls in (StudyPlace, EdgeDesign, MachineConfig):
        add_config_flags(edge, cls)
    for cls in RUN_CONFIGS:
        add_config_flags(edge, cls, skip=axes.NAMES + ("seed",))
    edge.add_argument("--out", help="directory of edge.csv and its pictures (default: studies/NAME)")
    edge.set_defaults(handler=run_edge, resumable=True)

    heatmaps = commands.add_parser("heatmaps", help="draw a stored study's heatmaps")
    add_config_flags(heatmaps, StudyPlace)
    heatmaps.add_argument("--out", help="output directory (default: studies/NAME beside the database)")
    heatmaps.add_argument("--x", default="leak", help=f"axis across: one of {', '.join(axes.NAMES)} (default: leak)")
    heatmaps.add_argument("--y", default="sub", help="axis up (default: sub); other axes that vary get a panel each")
    heatmaps.set_defaults(handler=run_heatmaps)

    report = commands.add_parser("report", help="write a stored study's report.md: numbers, intervals, findings")
    add_config_flags(report, StudyPlace)
    report.add_argument("--out", help="output directory (default: studies/NAME beside the database)")
    report.set_defaults(handler=run_report)

    export = commands.add_parser("export", help="write a stored study's tables: per seed and per setting")
    add_config_flags(export, StudyPlace)
    export.add_argument("--format", choices=EXPORT_FORMATS, default="csv", help="csv or json (default: csv)")
    export.add_argument("--out", help="output directory (default: studies/NAME beside the database)")
    export.set_defaults(handler=run_export)

    depth = commands.add_parser("depth", help="signal propagation through a deep MLP at initialisation, "
                                              "measured in float64 against the mean-field prediction")
    depth.add_argument("--depth", type=int, default=30, help="hidden layers (default: 30)")
    depth.add_argument("--width", type=int, default=512, help="units per hidden layer (default: 512)")
    depth.add_argument("--setting", action="append", type=_setting, metavar="LEAK,SUB",
                       help="a GeneralRelu setting; repeat for several (default: ReLU and the lesson's)")
    depth.add_argument("--init-scale", type=float, default=1.0, help="Kaiming multiplier (default: 1)")
    depth.add_argument("--bias-init", default="default", help="default (PyTorch's) or zero")
    depth.add_argument("--seeds", type=int_tuple, default=(0, 1, 2), help="seeds, comma separated (default: 0,1,2)")
    depth.add_argument("--batch", type=int, default=256, help="FashionMNIST images in the batch (default: 256)")
    depth.add_argument("--out", default="studies/depth", help="output directory (default: studies/depth)")
    add_config_flags(depth, DataConfig)
    depth.set_defaults(handler=run_depth)

    sharpness = commands.add_parser("sharpness", help="the loss Hessian's largest eigenvalue at initialisation "
                                                      "(and along the first steps), per seed")
    for cls in RUN_CONFIGS:
        add_config_flags(sharpness, cls, skip=("seed",))
    sharpness.add_argument("--seeds", type=int_tuple, default=(0,), help="seeds, comma separated (default: 0)")
    sharpness.add_argument("--steps", type=int, default=0,
                           help="also after each of the first K optimiser steps (default: 0, initialisation only)")
    sharpness.add_argument("--json", action="store_true", help="print one JSON object per seed and step")
    sharpness.set_defaults(handler=run_sharpness)

    findings = commands.add_parser("findings", help="run (or resume) the findings studies and write findings.md")
    findings.add_argument("--quick", action="store_true",
                          help="a small MLP and grid, minutes instead of about 90: for trying the command")
    findings.add_argument("--out", help="directory of findings.md and its figures "
                                        "(default: docs; studies/findings-quick with --quick)")
    add_config_flags(findings, MachineConfig)
    findings.set_defaults(handler=run_findings, resumable=True)

    bench = commands.add_parser("bench", help="benchmarks: print a table of timings (benchmarks/)")
    benches = bench.add_subparsers(dest="bench", required=True, parser_class=OneLineParser)
    study_speed = benches.add_parser("study", help="model-epochs per second of the ways to train a study")
    study_speed.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    study_speed.add_argument("--models", type=words, default=("mlp", "cnn"), help="comma separated (default: mlp,cnn)")
    study_speed.add_argument("--rows", type=words, default=None, help="comma separated of a,b,c,d8,d32,e (default: all)")
    study_speed.set_defaults(handler=run_bench_study)
    kernel = benches.add_parser("kernel", help="the fused kernel: GPU timings on CUDA, the analytic model always")
    kernel.set_defaults(handler=run_bench_kernel)

    dashboard = commands.add_parser("dashboard", help="serve optuna-dashboard on a stored study")
    add_config_flags(dashboard, StudyPlace)
    dashboard.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    dashboard.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    dashboard.set_defaults(handler=run_dashboard)
    return parser


def run_train(args: argparse.Namespace) -> int:
    config = RunConfig(*(config_from_flags(cls, args) for cls in RUN_CONFIGS))
    result = api.train(progress=not args.json and sys.stderr.isatty(), **_fields(config))
    if args.json:
        print(json.dumps(result.to_dict(with_history=args.history)))
    else:
        print(result.text())
    return 0


def run_search(args: argparse.Namespace) -> int:
    place, design, machine = (config_from_flags(cls, args) for cls in SEARCH_CONFIGS)
    run_config = RunConfig(*(config_from_flags(cls, args, skip=axes.NAMES + ("seed",)) for cls in RUN_CONFIGS))
    study = api.search_study(place, design, run_config, machine, progress=sys.stderr.isatty())
    print(study.summary())
    print("\nheatmaps: " + ", ".join(str(p) for p in study.save_figures()))
    print(f"dashboard: {PROG} dashboard --name {place.name}"
          + (f" --storage {mask_url(place.storage)}" if place.storage else ""))
    return 0


def run_edge(args: argparse.Namespace) -> int:
    if args.name is None:
        raise BadInput("an edge search needs its own --name (its probes are a study of their own)")
    place, design, machine = (config_from_flags(cls, args) for cls in (StudyPlace, EdgeDesign, MachineConfig))
    run_config = RunConfig(*(config_from_flags(cls, args, skip=axes.NAMES + ("seed",)) for cls in RUN_CONFIGS))
    print(f"ladder: {', '.join(f'{lr:g}' for lr in design.ladder())}\ntest: {design.test().describe()}",
          file=sys.stderr)
    edge = api.edge_study(place, design, run_config, machine, progress=sys.stderr.isatty())
    table = edge.table()
    print(table.drop(columns="done").to_string(index=False, na_rep="-", float_format="{:g}".format))
    unfinished = int((~table["done"]).sum())
    if unfinished:
        from study.schedule import MAX_FAILS_PER_SETTING

        print(f"\n{unfinished} settings have no edge yet: their probes failed {MAX_FAILS_PER_SETTING} times "
              f"(see the FAIL trials)")
    print("\n" + edge.cost())
    print("\n".join(str(p) for p in edge.save(args.out)))
    return 0


def run_heatmaps(args: argparse.Namespace) -> int:
    check_axes(args.x, args.y)
    study = api.load(**_fields(config_from_flags(StudyPlace, args)))
    for path in study.save_figures(args.out, args.x, args.y):
        print(path)
    return 0


def run_report(args: argparse.Namespace) -> int:
    print(api.load(**_fields(config_from_flags(StudyPlace, args))).report(args.out))
    return 0


def run_export(args: argparse.Namespace) -> int:
    study = api.load(**_fields(config_from_flags(StudyPlace, args)))
    print("\n".join(str(path) for path in study.export(args.out, args.format)))
    return 0


def _setting(text: str) -> tuple[float, float]:
    try:
        leak, sub = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give LEAK,SUB like 0.1,0.4") from None
    return leak, sub


def run_depth(args: argparse.Namespace) -> int:
    frame = api.signal(args.setting, depth=args.depth, width=args.width, init_scale=args.init_scale,
                       bias_init=args.bias_init, seeds=args.seeds, batch=args.batch, out_dir=args.out,
                       progress=sys.stderr.isatty(), **_fields(config_from_flags(DataConfig, args)))
    from study.experiments.signal import agreement_text

    print(agreement_text(frame))
    for name in ("signal.csv", "signal.png"):
        print(Path(args.out) / name)
    return 0


def run_sharpness(args: argparse.Namespace) -> int:
    config = RunConfig(*(config_from_flags(cls, args, skip=("seed",)) for cls in RUN_CONFIGS))
    fields = {k: v for k, v in _fields(config).items() if k != "seed"}
    points = api.sharpness(args.seeds, args.steps, progress=sys.stderr.isatty() and not args.json, **fields)
    if args.json:
        print("\n".join(json.dumps(point) for point in points.to_dict("records")))
        return 0
    from study.experiments.sharpness import sharpness_text

    print(sharpness_text(points, config.optim))
    return 0


def run_findings(args: argparse.Namespace) -> int:
    machine = config_from_flags(MachineConfig, args)
    print(api.findings(args.quick, args.out, progress=sys.stderr.isatty(), **_fields(machine)))
    return 0


def run_bench_study(args: argparse.Namespace) -> int:
    from benchmarks.study_speed import ROWS, report

    rows = args.rows or ROWS
    unknown = [r for r in rows if r not in ROWS] + [m for m in args.models if m not in ("mlp", "cnn")]
    if unknown:
        raise BadInput(f"no benchmark row or model {unknown[0]!r}: rows {','.join(ROWS)}; models mlp,cnn")
    print(report(args.device, args.models, rows, progress=sys.stderr.isatty()))
    return 0


def run_bench_kernel(args: argparse.Namespace) -> int:
    api.prepare_backend("triton")  # the interpreter where there is no GPU, before triton is imported
    from benchmarks.fused_linear_act import report

    print(report())
    return 0


def run_dashboard(args: argparse.Namespace) -> int:
    from study.dashboard import serve_dashboard

    serve_dashboard(config_from_flags(StudyPlace, args), args.host, args.port)
    return 0


def _fields(config) -> dict:
    """A configuration as the API's keywords (a RunConfig's four parts flattened)."""
    if isinstance(config, RunConfig):
        return {key: value for part in (config.data, config.model, config.optim, config.train)
                for key, value in _fields(part).items()}
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def resume_command(argv: Sequence[str]) -> str:
    """The command as given, with any password masked and a word on how to give it instead."""
    command = " ".join([PROG, *argv])
    shown = redact(command)
    if shown != command:
        shown += (f"   (password hidden: put the storage URL in ${STORAGE_ENV}, or leave the password out "
                  "of it and let libpq read PGPASSWORD or ~/.pgpass)")
    return shown


def main(argv: Sequence[str] | None = None) -> int:
    guard_output()  # first: argparse's own errors may quote a --storage value
    argv = list(sys.argv[1:] if argv is None else argv)
    args = None
    try:
        # Ctrl-C and SIGTERM from here on are requests that the work below honours at safe points.
        with interrupts.stop_requests(), libraries_quiet():
            import matplotlib

            matplotlib.use("Agg")  # files only: no display on servers and in CI
            args = build_parser().parse_args(argv)
            args.argv = argv  # workers and the resume hint repeat the command as given
            return args.handler(args)
    except FieldError as e:
        print(f"{PROG}: error: {flag_of(e.field)} {as_flags(e.problem)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BadInput as e:
        print(f"{PROG}: error: {as_flags(str(e))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except WorkerStopped as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return e.exit_code
    except StorageFault as e:
        return _storage_fault(e)
    except OSError as e:
        from study.faults import fault_of

        fault = fault_of(e)
        if fault is None:
            raise
        return _storage_fault(fault)
    except KeyboardInterrupt as e:  # Interrupted; a plain one only from Python's handler, before ours
        if getattr(args, "resumable", False):
            print(f"{PROG}: interrupted; run the same command again to continue:\n  {resume_command(argv)}",
                  file=sys.stderr)
        else:
            print(f"{PROG}: interrupted", file=sys.stderr)
        return getattr(e, "exit_code", EXIT_INTERRUPTED)


def _storage_fault(fault: StorageFault) -> int:
    print(f"{PROG}: error: {as_flags(str(fault))}", file=sys.stderr)
    return EXIT_STORAGE_FAULT
