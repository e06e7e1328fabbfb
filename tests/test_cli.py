"""The command line as a user meets it: JSON out, readable summary, one-line errors with exit 2."""

import gzip
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, assert_one_line_error, run_cli
from study.cli import HANDLERS, build_parser


@pytest.mark.slow
def test_train_json_prints_one_object_with_the_result():
    proc = run_cli("train", "--model", "cnn", "--leak", "0.1", "--sub", "0.4", "--init-scale", "1.0",
                   "--seed", "0", "--epochs", "1", "--lr", "0.15", "--json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert {"val_acc", "test_acc", "diverged", "seconds", "layers"} <= set(record)
    assert record["diverged"] is False and record["test_acc"] >= 0.80
    assert [set(layer) >= {"mean", "std", "near_zero_frac"} for layer in record["layers"]] == [True] * 4
    assert record["config"]["model"]["leak"] == 0.1


def test_train_prints_a_readable_summary():
    proc = run_cli("train", "--model", "mlp", "--widths", "64", "--lr", "0.05")
    assert proc.returncode == 0, proc.stderr
    assert "val acc" in proc.stdout and "near-zero" in proc.stdout
    assert "trained" in proc.stdout


def test_diverged_run_is_a_result_not_an_error():
    proc = run_cli("train", "--model", "mlp", "--init-scale", "10", "--lr", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["diverged"] is True


def truncated_data_dir(data_copy):
    path = data_copy / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:5000]))
    return str(data_copy)


# One case of each kind of refusal; every value's is tested on the dataclasses (tests/test_config.py).
BAD_INPUTS = [
    (["--model", "resnet"], "invalid choice: 'resnet'"),
    (["--leak", "1"], "--leak must be in [0, 1)"),
    (["--epochs", "1.5"], "--epochs '1.5': expected an integer"),
    (["--device", "tpu"], "--device 'tpu' is unknown"),
    (["--data-dir", "/nonexistent/fashion"], "is not a directory"),
    ("empty_dir", "4 FashionMNIST files missing"),
    ("truncated", "train-images-idx3-ubyte.gz is truncated"),
    (["--no-such-flag"], "unrecognized arguments"),
]


@pytest.mark.parametrize("flags, message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(flags, message, tmp_path, request):
    if flags == "empty_dir":
        flags = ["--data-dir", str(tmp_path)]
    elif flags == "truncated":
        flags = ["--data-dir", truncated_data_dir(request.getfixturevalue("data_copy"))]
    assert_one_line_error(run_cli("train", "--model", "mlp", *flags), message)


def test_no_command_is_one_line_and_exit_2():
    proc = run_cli()
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_train_on_the_fused_kernel_from_the_command_line():
    """--backend triton on a machine without CUDA chooses Triton's interpreter before triton loads."""
    env_free = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "study", "train", "--model", "mlp", "--widths", "32",
                           "--backend", "triton", "--max-steps", "3", "--batch-size", "256", "--json"],
                          cwd=ROOT, env={**env_free, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["steps"] == 3 and record["config"]["train"]["backend"] == "triton"
    assert record["layers"][0]["units"] == 32


@pytest.mark.parametrize("command", sorted(HANDLERS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([*command.split(), "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")
