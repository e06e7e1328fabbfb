"""The command line: flags -> config dataclasses -> work -> printed results and exit codes.

Only this module parses flags, prints for people and picks exit codes. Everything below raises
`BadInput` for a problem the user can fix (one line on stderr, exit code 2) and `StorageFault` when
the database failed under a running study (one line, exit code 3). Everything printed passes
`study.masking.redact`, so no password reaches the terminal or a log.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Sequence

from pathlib import Path

from study.config import (SEARCHED, STORAGE_ENV, DataConfig, ModelConfig, OptimConfig, RunConfig, SearchConfig,
                          TrainConfig)
from study.errors import BadInput, StorageFault
from study.masking import guard_output, mask_url, redact

PROG = "python -m study"
EXIT_BAD_INPUT = 2
EXIT_STORAGE_FAULT = 3
EXIT_INTERRUPTED = 130


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block) and exits 2."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def add_config_flags(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = (),
                     defaults: dict | None = None) -> None:
    """One flag per field of dataclass `cls`: `init_scale` -> `--init-scale`, typed from the field.

    `defaults` overrides a field's default for this command (e.g. the quick study's lr).
    """
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = (defaults or {}).get(f.name, f.default)
        kwargs = {"help": f.metadata.get("help", ""), "default": default, "dest": f.name}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        kwargs["type"] = _PARSERS[str(f.type)]
        if default is not None and not isinstance(default, tuple):
            kwargs["help"] += f" (default: {default})"
        group.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def config_from_flags(cls: type, args: argparse.Namespace, skip: Sequence[str] = ()):
    """The dataclass `cls` built from the flags `add_config_flags` made (validated by the dataclass);
    fields in `skip` keep their defaults."""
    names = {f.name for f in dataclasses.fields(cls)} - set(skip)
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _finite_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


_PARSERS = {
    "int": _int,
    "float": _finite_float,
    "str": str,
    "str | None": str,
    "float | None": _finite_float,
    "int | None": _int,
    "tuple[int, ...]": _int_tuple,
}

RUN_CONFIGS = (DataConfig, ModelConfig, OptimConfig, TrainConfig)
# `python -m study search` with no flags is the quick study: the lesson's CNN set-up, lr 0.2 included
# (the rate at which the lesson's settings are seed-fragile, which is what the study measures).
QUICK_STUDY = {"model": "cnn", "lr": 0.2, "momentum": 0.85, "batch_size": 1024, "epochs": 1}


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

    search = commands.add_parser("search", help="run (or continue) a study over init_scale, leak and sub")
    add_config_flags(search, SearchConfig)
    add_config_flags(search, DataConfig)
    add_config_flags(search, ModelConfig, skip=SEARCHED, defaults=QUICK_STUDY)
    add_config_flags(search, OptimConfig, defaults=QUICK_STUDY)
    add_config_flags(search, TrainConfig, skip=("seed",))
    search.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # started by --workers
    search.set_defaults(handler=run_search)

    heatmaps = commands.add_parser("heatmaps", help="draw a stored study's heatmaps")
    _add_study_flags(heatmaps)
    heatmaps.add_argument("--out", help="output directory (default: studies/NAME beside the database)")
    heatmaps.set_defaults(handler=run_heatmaps)

    report = commands.add_parser("report", help="write a stored study's report.md: numbers, intervals, findings")
    _add_study_flags(report)
    report.add_argument("--out", help="output directory (default: studies/NAME beside the database)")
    report.set_defaults(handler=run_report)

    depth = commands.add_parser("depth", help="signal propagation through a deep MLP at initialisation")
    depth.add_argument("--depth", type=_int, default=50, help="hidden layers (default: 50)")
    depth.add_argument("--width", type=_int, default=256, help="units per hidden layer (default: 256)")
    depth.add_argument("--leak", type=_finite_float, default=0.0, help="GeneralRelu leak (default: 0)")
    depth.add_argument("--sub", type=_finite_float, default=0.0, help="GeneralRelu sub (default: 0)")
    depth.add_argument("--init-scale", type=_finite_float, default=1.0, help="Kaiming multiplier (default: 1)")
    depth.add_argument("--seeds", default="0,1,2", help="seeds, comma separated (default: 0,1,2)")
    depth.add_argument("--batch", type=_int, default=512, help="FashionMNIST images in the batch (default: 512)")
    depth.add_argument("--out", default="studies/depth", help="output directory (default: studies/depth)")
    add_config_flags(depth, DataConfig)
    depth.set_defaults(handler=run_depth)

    findings = commands.add_parser("findings", help="run the findings studies and write docs/findings.md")
    findings.add_argument("--out", default="docs", help="directory of findings.md and its figures (default: docs)")
    findings.set_defaults(handler=run_findings)

    dashboard = commands.add_parser("dashboard", help="serve optuna-dashboard on a stored study")
    _add_study_flags(dashboard)
    dashboard.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    dashboard.add_argument("--port", type=_int, default=8080, help="port (default: 8080)")
    dashboard.set_defaults(handler=run_dashboard)
    return parser


def _add_study_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="quick", help="study name (default: quick)")
    parser.add_argument("--storage", help=f"Optuna storage URL (default: ${STORAGE_ENV} if set, "
                                          "else sqlite:///studies/NAME.db)")


def run_train(args: argparse.Namespace) -> int:
    config = RunConfig(*(config_from_flags(cls, args) for cls in RUN_CONFIGS))
    _prepare_backend(config.train.backend)
    from study.train import train  # torch is imported only once the flags are known to be good

    result = train(config, progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps(result.to_dict(with_history=args.history)))
    else:
        print(format_result(result))
    return 0


def run_search(args: argparse.Namespace) -> int:
    search_config = config_from_flags(SearchConfig, args)
    # The searched fields (init_scale, leak, sub) are SearchConfig's spaces here, set per trial.
    run_config = RunConfig(*(config_from_flags(cls, args, skip=SEARCHED + ("seed",)) for cls in RUN_CONFIGS))
    _prepare_backend(run_config.train.backend)
    from study import plots, results, search, workers
    from study.train import resolve_device

    if args.worker:
        share_cores(search_config)
    runner = search.Search(search_config, run_config, progress=sys.stderr.isatty() and not args.worker)
    try:
        study = runner.open()
        device_type = resolve_device(run_config.train.device).type
        if args.worker or (search_config.worker_count(device_type) == 1 and search_config.gpus is None):
            runner.work(study)
        else:
            code = workers.run_workers(workers.worker_commands(args.argv[1:], search_config, device_type),
                                       search_config.storage_url())
            if code:
                print(f"{PROG}: a worker stopped with exit code {code}; run the same command again to continue",
                      file=sys.stderr)
                return code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to continue:\n  {resume_command(args.argv)}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.worker:
        return 0
    print(results.summary_table(study))
    pictures = plots.draw_study(study, runner.paths.out_dir)
    print("\nheatmaps: " + ", ".join(str(p) for p in pictures))
    print(f"dashboard: {PROG} dashboard --name {search_config.name}"
          + (f" --storage {mask_url(search_config.storage)}" if search_config.storage else ""))
    return 0


def run_heatmaps(args: argparse.Namespace) -> int:
    from study import plots, search

    config = SearchConfig(name=args.name, storage=args.storage)
    study = search.load_existing_study(config)
    out = Path(args.out) if args.out else search.study_paths(config).out_dir
    for path in plots.draw_study(study, out):
        print(path)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from study import report, search

    config = SearchConfig(name=args.name, storage=args.storage)
    study = search.load_existing_study(config)
    path = report.write_report(study, Path(args.out) if args.out else search.study_paths(config).out_dir)
    print(path)
    return 0


def run_depth(args: argparse.Namespace) -> int:
    if args.depth < 1 or args.width < 1 or args.batch < 2:
        raise BadInput("--depth and --width must be >= 1 and --batch >= 2")
    ModelConfig(model="mlp", leak=args.leak, sub=args.sub, init_scale=args.init_scale)  # checks the values
    seeds = SearchConfig(seeds=args.seeds).seed_list()
    data_config = config_from_flags(DataConfig, args)
    from study.data import load_fashion_mnist
    from study.depth import INITS, last_to_first_std, run_depth

    batch = load_fashion_mnist(data_config).x_train[:args.batch]
    profiles, paths = run_depth(batch, Path(args.out), args.depth, args.width, args.leak, args.sub,
                                args.init_scale, seeds, progress=sys.stderr.isatty())
    print(f"std of the last hidden layer / the first, mean over seeds {','.join(map(str, seeds))}:")
    for init in INITS:
        print(f"  {init:>8}: {last_to_first_std(profiles, init):.3g}")
    for path in paths.values():
        print(path)
    return 0


def run_findings(args: argparse.Namespace) -> int:
    from study.findings import write_findings

    print(write_findings(Path(args.out), progress=sys.stderr.isatty()))
    return 0


def run_dashboard(args: argparse.Namespace) -> int:
    from study.dashboard import serve_dashboard

    serve_dashboard(SearchConfig(name=args.name, storage=args.storage), args.host, args.port)
    return 0


def resume_command(argv: Sequence[str]) -> str:
    """The command as given, with any password masked and a word on how to give it instead."""
    command = " ".join([PROG, *argv])
    shown = redact(command)
    if shown != command:
        shown += (f"   (password hidden: put the storage URL in ${STORAGE_ENV}, or leave the password out "
                  "of it and let libpq read PGPASSWORD or ~/.pgpass)")
    return shown


def share_cores(search_config: SearchConfig) -> None:
    """A worker started by --workers takes its share of this machine's cores for its CPU threads:
    W workers at all cores each would fight over them."""
    import torch

    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, cores // search_config.worker_count("cpu")))


def _prepare_backend(backend: str) -> None:
    if backend == "triton":
        from study.model import choose_triton_interpreter
        choose_triton_interpreter()


def format_result(result) -> str:
    model, optim, run = result.config["model"], result.config["optim"], result.config["train"]
    status = f"DIVERGED at step {result.diverged_step}" if result.diverged else "trained"
    lines = [
        f"{model['model']}  GeneralRelu(leak={model['leak']}, sub={model['sub']}, maxv={model['maxv']})  "
        f"init {model['init']} x {model['init_scale']}  seed {run['seed']}",
        f"SGD lr {optim['lr']} momentum {optim['momentum']} ({optim['schedule']}), batch {optim['batch_size']}, "
        f"{optim['epochs']} epoch(s): {status}",
        f"val acc {result.val_acc:.4f}   test acc {result.test_acc:.4f}   "
        f"{result.steps} steps in {result.seconds:.1f} s",
        "",
        f"{'layer':>5} {'units':>5} {'mean':>8} {'std':>8} {'near-zero':>9} {'dead units':>10}",
    ]
    for index, layer in enumerate(result.layers, start=1):
        lines.append(f"{index:>5} {layer['units']:>5} {layer['mean']:>8.3f} {layer['std']:>8.3f} "
                     f"{layer['dead_frac']:>9.3f} {layer['dead_units']:>10}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    guard_output()  # first: argparse's own errors may quote a --storage value
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # workers and the resume hint repeat the command as given
    try:
        return args.handler(args)
    except BadInput as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StorageFault as e:
        return _storage_fault(e)
    except OSError as e:
        from study.faults import fault_of

        fault = fault_of(e)
        if fault is None:
            raise
        return _storage_fault(fault)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _storage_fault(fault: StorageFault) -> int:
    print(f"{PROG}: error: {fault}", file=sys.stderr)
    return EXIT_STORAGE_FAULT
