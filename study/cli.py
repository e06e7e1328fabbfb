"""The command line: flags -> config dataclasses -> work -> printed results and exit codes.

Only this module parses flags, prints for people and picks exit codes. Everything below raises
`BadInput` for a problem the user can fix; here it becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Sequence

from study.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from study.errors import BadInput

PROG = "python -m study"
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block) and exits 2."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def add_config_flags(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One flag per field of dataclass `cls`: `init_scale` -> `--init-scale`, typed from the field."""
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kwargs = {"help": f.metadata.get("help", ""), "default": f.default, "dest": f.name}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        kwargs["type"] = _PARSERS[str(f.type)]
        if f.default is not None and not isinstance(f.default, tuple):
            kwargs["help"] += f" (default: {f.default})"
        group.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def config_from_flags(cls: type, args: argparse.Namespace):
    """The dataclass `cls` built from the flags `add_config_flags` made (validated by the dataclass)."""
    names = {f.name for f in dataclasses.fields(cls)}
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
    "tuple[int, ...]": _int_tuple,
}

RUN_CONFIGS = (DataConfig, ModelConfig, OptimConfig, TrainConfig)


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
    return parser


def run_train(args: argparse.Namespace) -> int:
    config = RunConfig(*(config_from_flags(cls, args) for cls in RUN_CONFIGS))
    from study.train import train  # torch is imported only once the flags are known to be good

    result = train(config, progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps(result.to_dict(with_history=args.history)))
    else:
        print(format_result(result))
    return 0


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
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except BadInput as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
