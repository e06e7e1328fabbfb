"""The configuration dataclasses on their own: defaults, typed values, refusals that name the field,
and the command line's one parser from flag strings to those values."""

import dataclasses

import pytest

import study
from study.cli import build_parser
from study.axes import parse_space
from study.flags import config_from_flags
from study.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from study.axes import NAMES as SEARCHED, Range, describe_space
from study.design import MachineConfig, StudyDesign
from study.place import StudyPlace
from study.errors import FieldError

REFUSED = [
    (ModelConfig, {"leak": 1.0}, "leak", "must be in [0, 1)"),
    (ModelConfig, {"leak": -0.1}, "leak", "must be in [0, 1)"),
    (ModelConfig, {"leak": float("nan")}, "leak", "must be a finite number"),
    (ModelConfig, {"init_scale": -1.0}, "init_scale", "must be positive"),
    (OptimConfig, {"epochs": 0}, "epochs", "must be >= 1"),
    (OptimConfig, {"batch_size": 0}, "batch_size", "must be >= 1"),
    (StudyDesign, {"n_trials": 0}, "n_trials", "must be >= 1"),
    (MachineConfig, {"population": 0}, "population", "off or auto, got 0"),
    (ModelConfig, {"model": "resnet"}, "model", "'resnet' is unknown: choose one of mlp, cnn"),
    (ModelConfig, {"widths": (32, 0)}, "widths", "must be positive integers"),
    (ModelConfig, {"bias_init": "ones"}, "bias_init", "choose one of default, zero"),
    (OptimConfig, {"lr": 0.0}, "lr", "must be positive"),
    (OptimConfig, {"schedule": "cosine"}, "schedule", "choose one of constant, onecycle"),
    (TrainConfig, {"device": "tpu"}, "device", "'tpu' is unknown"),
    (TrainConfig, {"dtype": "half"}, "dtype", "choose one of float32, bfloat16, float64"),
    (DataConfig, {"n_val": -1}, "n_val", "must be between 0 and 59999"),
    (TrainConfig, {"diverge_factor": 1.0}, "diverge_factor", "must be a finite number above 1 (or off)"),
    (TrainConfig, {"diverge_factor": float("inf")}, "diverge_factor", "must be a finite number above 1"),
    (TrainConfig, {"diverge_loss": 0.0}, "diverge_loss", "must be a finite positive number (or off)"),
    (StudyDesign, {"leak": (0, 1)}, "leak", "values must be in [0, 1)"),
    (StudyDesign, {"leak": (0.1, 0.1)}, "leak", "lists a value twice"),
    (StudyDesign, {"leak": Range(0, 0.5)}, "leak", "is a range, but the grid sampler needs lists"),
    (StudyDesign, {"sampler": "tpe", "sub": Range(0, 1, log=True)}, "sub", "may not be a log range"),
    (StudyDesign, {"sampler": "tpe", "leak": Range(0.3, 0.1)}, "leak", "empty or inverted"),
    (StudyDesign, {"init_scale": (0, 1)}, "init_scale", "values must be positive"),
    (StudyDesign, {"seeds": (1, 1)}, "seeds", "distinct non-negative integers"),
    (StudyDesign, {"n_trials": 26}, "n_trials", "exceeds the grid's 25 points"),
    (StudyDesign, {"objective": "speed"}, "objective", "choose one of accuracy, stability"),
    (StudyPlace, {"name": "a/b"}, "name", "no '/'"),
    (MachineConfig, {"workers": 0}, "workers", "must be a number >= 1 or auto"),
    (MachineConfig, {"population": "many"}, "population", "off or auto"),
    (MachineConfig, {"heartbeat_seconds": 30, "grace_seconds": 10}, "grace_seconds", "must exceed"),
]


@pytest.mark.parametrize("cls, values, field, problem", REFUSED, ids=[f"{c.__name__}.{f}" for c, _, f, _ in REFUSED])
def test_a_bad_value_is_refused_naming_its_field(cls, values, field, problem):
    with pytest.raises(FieldError) as refused:
        cls(**values)
    assert refused.value.field == field and problem in refused.value.problem
    assert str(refused.value).startswith(field + " ")


def test_python_values_are_normalised_so_equal_designs_compare_equal():
    import numpy as np

    assert StudyDesign(leak=[0, 0.1], sub=0.4, seeds=[0, 1]) == StudyDesign(leak=(0.0, 0.1), sub=(0.4,), seeds=(0, 1))
    assert StudyDesign(leak=(0, 0.1)).leak == (0.0, 0.1) and isinstance(StudyDesign().sub, tuple)
    # What a notebook hands over: numpy arrays and numpy integers.
    from_numpy = StudyDesign(leak=np.array([0, 0.1]), seeds=np.arange(3))
    assert from_numpy == StudyDesign(leak=(0, 0.1), seeds=(0, 1, 2))
    assert all(type(seed) is int for seed in from_numpy.seeds)  # stored as JSON, compared on resume
    with pytest.raises(FieldError, match="seeds '0,1.5'"):
        StudyDesign(seeds=(0, 1.5))


def test_the_command_line_and_the_dataclasses_share_one_set_of_defaults():
    args = build_parser().parse_args(["search"])
    assert config_from_flags(StudyDesign, args) == StudyDesign()
    assert config_from_flags(MachineConfig, args) == MachineConfig()
    assert config_from_flags(StudyPlace, args) == StudyPlace()
    args = build_parser().parse_args(["train"])
    assert all(config_from_flags(cls, args) == cls() for cls in (DataConfig, ModelConfig, OptimConfig, TrainConfig))
    assert RunConfig().optim.lr == 0.2 and RunConfig().model.model == "cnn"  # the lesson's


@pytest.mark.parametrize("text, space", [("0,0.2,0.4", (0.0, 0.2, 0.4)), ("0:0.5", Range(0.0, 0.5)),
                                         ("0.1:10:log", Range(0.1, 10.0, log=True)), ("1", (1.0,))])
def test_spaces_parse_and_are_written_back_as_given(text, space):
    assert parse_space(text) == space
    assert describe_space(space) == text


@pytest.mark.parametrize("flags, field, problem", [
    (["--seeds", "0,one"], "seeds", "'0,one': expected comma-separated integers"),
    (["--leak", "0,,1"], "leak", "give a list like 0,0.2,0.4 or a range like 0:0.5"),
    (["--leak", "0:1:lin"], "leak", "give a list like"),
    (["--workers", "all"], "workers", "must be a number >= 1 or auto, got all"),
    (["--gpus", "0,x"], "gpus", "'0,x': expected comma-separated integers"),
    (["--lr", "abc"], "lr", "'abc': give a list like"),
    (["--lr", "0,0.1"], "lr", "values must be positive, got 0"),
    (["--momentum", "0.5,1"], "momentum", "values must be in [0, 1), got 1"),
    (["--momentum", "0:0.9:log"], "momentum", "may not be a log range: only init_scale and lr may"),
    (["--epochs", "x"], "epochs", "'x': expected an integer"),
    (["--widths", "256,x"], "widths", "'256,x': expected comma-separated integers"),
    (["--maxv", "none"], "maxv", "'none': expected a number or off"),
])
def test_flag_strings_that_are_not_values_name_the_field(flags, field, problem):
    args = build_parser().parse_args(["search", *flags])
    with pytest.raises(FieldError) as refused:
        for cls in (StudyDesign, MachineConfig, ModelConfig, OptimConfig):
            config_from_flags(cls, args, skip=SEARCHED if cls in (ModelConfig, OptimConfig) else ())
    assert refused.value.field == field and problem in refused.value.problem


def test_flags_become_typed_values():
    args = build_parser().parse_args(["search", "--leak", "0,0.1", "--sampler", "tpe", "--sub", "0:0.9",
                                      "--seeds", "3,4", "--workers", "auto", "--gpus", "0,2", "--population", "4",
                                      "--lr", "0.05:0.8:log", "--momentum", "0,0.9"])
    design, machine = config_from_flags(StudyDesign, args), config_from_flags(MachineConfig, args)
    assert design.leak == (0.0, 0.1) and design.sub == Range(0.0, 0.9) and design.seeds == (3, 4)
    assert design.lr == Range(0.05, 0.8, log=True) and design.momentum == (0.0, 0.9)
    assert machine.workers == "auto" and machine.gpus == (0, 2) and machine.population == 4


@pytest.mark.parametrize("flags, factor, limit, rule", [
    ([], 40.0, None, "loss is not finite or above 40x its first loss"),
    (["--diverge-factor", "off", "--diverge-loss", "100"], None, 100.0, "loss is not finite or above 100"),
    (["--diverge-factor", "10", "--diverge-loss", "50"], 10.0, 50.0,
     "loss is not finite or above 10x its first loss or above 50"),
    (["--diverge-factor", "off"], None, None, "loss is not finite"),
])
def test_the_divergence_rule_is_relative_absolute_both_or_neither(flags, factor, limit, rule):
    train = config_from_flags(TrainConfig, build_parser().parse_args(["train", *flags]))
    assert (train.diverge_factor, train.diverge_loss) == (factor, limit)
    for first_loss in (2.3, 30.0):  # the lesson's start, and init_scale 2's
        relative = first_loss * factor if factor else float("inf")
        assert train.divergence_limit(first_loss) == min(relative, limit or float("inf"))
    assert train.divergence_rule() == rule


def test_every_field_is_a_flag_and_a_keyword_of_the_python_api():
    """One configuration, two doors: no field is reachable from one and not the other."""
    parser = build_parser()
    search_flags = {a.dest for a in parser._subparsers._group_actions[0].choices["search"]._actions}
    for cls in (StudyPlace, StudyDesign, MachineConfig, DataConfig, OptimConfig):
        assert {f.name for f in dataclasses.fields(cls)} <= search_flags, cls
    with pytest.raises(study.BadInput, match="unknown setting 'learning_rate'"):
        study.search("x", learning_rate=0.1)
    with pytest.raises(study.BadInput, match="unknown setting 'seed'"):
        study.search("x", seed=1)  # a study's seeds are `seeds`
