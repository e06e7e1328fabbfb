"""The command line: flags -> config dataclasses -> work -> printed results and exit codes.

Only this module (with `study/parser.py`, the commands and their flags, and `study/flags.py`, which
makes the flags from the dataclasses' fields and parses their strings into typed values) parses flags, prints for people and picks exit codes; it
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
from study.config import MACHINE_LOCAL, DataConfig, RunConfig
from study.design import DynamicsDesign, MachineConfig, StudyDesign
from study.errors import BadInput, FieldError, StorageFault, WorkerStopped
from study.flags import EXIT_BAD_INPUT, as_flags, config_from_flags, flag_of
from study.ladder import EdgeDesign
from study.masking import guard_output, mask_url, redact
from study.parser import PROG, RUN_CONFIGS, SEARCH_CONFIGS, build_parser
from study.place import STORAGE_ENV, StudyPlace
from study.quiet import libraries_quiet
from study.views import check_axes

EXIT_STORAGE_FAULT = 3
EXIT_INTERRUPTED = 130


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
    _show_study(api.search_study(place, design, run_config, machine, progress=sys.stderr.isatty()), place)
    return 0


def _show_study(study: api.Study, place: StudyPlace) -> None:
    print(study.summary())
    print("\nheatmaps: " + ", ".join(str(p) for p in study.save_figures()))
    print(f"dashboard: {PROG} dashboard --name {place.name}"
          + (f" --storage {mask_url(place.storage)}" if place.storage else ""))


def run_edge(args: argparse.Namespace) -> int:
    if args.name is None:
        raise BadInput("an edge search needs its own --name (its probes are a study of their own)")
    place, design, machine = (config_from_flags(cls, args) for cls in (StudyPlace, EdgeDesign, MachineConfig))
    run_config = RunConfig(*(config_from_flags(cls, args, skip=axes.NAMES + ("seed",)) for cls in RUN_CONFIGS))
    print(design.describe_method(), file=sys.stderr)
    if args.create_only:
        return _created(api.create_study(place, design, run_config), place)
    _show_edge(api.edge_study(place, design, run_config, machine, progress=sys.stderr.isatty()), args.out)
    return 0


def run_dynamics(args: argparse.Namespace) -> int:
    place = config_from_flags(StudyPlace, args)
    place = place if args.name is not None else dataclasses.replace(place, name="dynamics")
    design, machine = config_from_flags(DynamicsDesign, args), config_from_flags(MachineConfig, args)
    run_config = RunConfig(*(config_from_flags(cls, args, skip=axes.NAMES + ("seed",)) for cls in RUN_CONFIGS))
    study = api.dynamics_study(place, design, run_config, machine, progress=not args.json and sys.stderr.isatty())
    steps, outcomes = study.steps(), study.outcomes()
    if args.json:
        for row in [*steps.to_dict("records"), *outcomes.to_dict("records")]:
            print(json.dumps({key: _plain(value) for key, value in row.items()}))
        return 0
    print(outcomes.to_string(index=False, na_rep="-", float_format="{:.3g}".format))
    print("\n" + study.outcome_summary().to_string(index=False, na_rep="-", float_format="{:.3g}".format))
    print("\n" + "\n".join(str(path) for path in study.save_figures()))
    return 0


def _plain(value):
    """A pandas cell as JSON: None for a missing number, Python's int and float for numpy's."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return value.item() if hasattr(value, "item") else value


def run_create(args: argparse.Namespace) -> int:
    place, design = (config_from_flags(cls, args) for cls in (StudyPlace, StudyDesign))
    skip = axes.NAMES + ("seed",) + MACHINE_LOCAL
    return _created(api.create_study(place, design, RunConfig(*(config_from_flags(cls, args, skip=skip)
                                                                 for cls in RUN_CONFIGS))), place)


def _created(study: api.Study, place: StudyPlace) -> int:
    where = f" --storage {mask_url(place.storage)}" if place.storage else ""
    print(f"study {place.name!r} is stored; on each machine run:\n  {PROG} work --name {place.name}{where} "
          "[--workers auto] [--data-dir DIR] [--artifacts SHARED_DIR]")
    return 0


def run_work(args: argparse.Namespace) -> int:
    place, machine = config_from_flags(StudyPlace, args), config_from_flags(MachineConfig, args)
    study = api.work(place.name, storage=place.storage, progress=sys.stderr.isatty(), data_dir=args.data_dir,
                     device=args.device or "auto", **_fields(machine))
    if isinstance(study, api.Edge):
        _show_edge(study, args.out)
    else:
        _show_study(study, place)
    return 0


def _show_edge(edge: api.Edge, out: str | None) -> None:
    table = edge.table()
    print(table.drop(columns="done").to_string(index=False, na_rep="-", float_format="{:g}".format))
    unfinished = int((~table["done"]).sum())
    if unfinished:
        from study.schedule import MAX_FAILS_PER_SETTING

        print(f"\n{unfinished} settings have no edge yet: their probes failed {MAX_FAILS_PER_SETTING} times "
              f"(see the FAIL trials)")
    laws = edge.laws()
    if len(laws):
        print("\nThe edge as a law across momentum (lr90 ~ (1 - momentum)^exponent) or init scale "
              "(~ init_scale^exponent); fit_p < 0.05: the law does not describe the levels")
        print(laws.drop(columns=["n", "k"]).to_string(index=False, na_rep="-", float_format="{:.3g}".format))
    print("\n" + edge.cost())
    print("\n".join(str(p) for p in edge.save(out)))


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
    from benchmarks import quick_study
    from benchmarks.study_speed import ROWS, report

    every = (*ROWS, "quick")
    rows = args.rows or every
    unknown = [r for r in rows if r not in every] + [m for m in args.models if m not in ("mlp", "cnn")]
    if unknown:
        raise BadInput(f"no benchmark row or model {unknown[0]!r}: rows {','.join(ROWS)},quick; models mlp,cnn")
    if set(rows) - {"quick"}:
        print(report(args.device, args.models, tuple(r for r in rows if r != "quick"), progress=sys.stderr.isatty()))
    if "quick" in rows:
        print(quick_study.report())
    return 0


def run_bench_kernel(args: argparse.Namespace) -> int:
    api.prepare_backend("triton")  # the interpreter where there is no GPU, before triton is imported
    from benchmarks.fused_linear_act import report

    print(report())
    return 0


def run_bench_edge(args: argparse.Namespace) -> int:
    if args.reps < 1:
        raise BadInput(f"--reps must be >= 1, got {args.reps}")
    from benchmarks.edge_methods import report

    print(report(args.reps, args.seed))
    return 0


def run_dashboard(args: argparse.Namespace) -> int:
    from study.dashboard import serve_dashboard

    serve_dashboard(config_from_flags(StudyPlace, args), args.host, args.port, args.artifacts)
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
            return HANDLERS[" ".join(filter(None, (args.command, getattr(args, "bench", None))))](args)
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


HANDLERS = {"train": run_train, "search": run_search, "edge": run_edge, "dynamics": run_dynamics, "create": run_create,
            "work": run_work,
            "heatmaps": run_heatmaps, "report": run_report, "export": run_export, "depth": run_depth,
            "sharpness": run_sharpness, "findings": run_findings, "bench study": run_bench_study,
            "bench kernel": run_bench_kernel, "bench edge": run_bench_edge, "dashboard": run_dashboard}
