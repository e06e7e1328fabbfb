"""A study's design and run configuration read back from its stored configuration: what
`python -m study work` runs on a machine that did not create the study.

The inverse of `study.design.study_config`: for every configuration it stores (today's, or an
earlier version's upgraded by `upgrade_stored_config`), `study_config(design_of(c), run_of(c))`
is `c` again, so the joining machine's design passes the comparison that every machine's does.
What a machine keeps for itself (`config.NOT_DESIGN`: the data directory, the device) is the
joining machine's own. A study's target of trials (`n_trials`) is not part of the compared design
(a re-run may raise it); `create` stores it beside (`records.write_target`) and `work` reads it.
"""

from __future__ import annotations

from study.axes import describe_space, parse_space
from study.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from study.design import TRAIN_THRESHOLD, Design, DynamicsDesign, StudyDesign
from study.errors import FieldError
from study.ladder import EdgeDesign


def is_edge(stored: dict) -> bool:
    """Whether a stored configuration is an edge search's (`EdgeDesign.stored`)."""
    return "edge" in stored


def design_of(stored: dict, n_trials: int | None = None) -> Design:
    """The design of an upgraded stored configuration: a `StudyDesign`, a `DynamicsDesign`, or an
    `EdgeDesign` whose `lr` is its stored ladder's rungs."""
    spaces = {name: parse_space(text) for name, text in stored["space"].items()}
    threshold = stored.get("train_threshold", TRAIN_THRESHOLD)
    if is_edge(stored):
        return EdgeDesign(**spaces, **stored["edge"], train_threshold=threshold)
    kind, measured = (DynamicsDesign, stored["dynamics"]) if "dynamics" in stored else (StudyDesign, {})
    return kind(**spaces, sampler=stored["sampler"], objective=stored["objective"], seeds=tuple(stored["seeds"]),
                train_threshold=threshold, n_trials=n_trials, **measured)


def run_of(stored: dict, data_dir: str | None = None, device: str = "auto") -> RunConfig:
    """The run configuration of an upgraded stored configuration, with this machine's data
    directory and device."""
    return RunConfig(DataConfig(**stored["data"], data_dir=data_dir), ModelConfig(**stored["model"]),
                     OptimConfig(**stored["optim"]), TrainConfig(**stored["train"], device=device))


def check_storable(design: Design) -> None:
    """Every value of `design` as its storage keeps it (6 significant digits): the machines that join
    read the stored values, and one that trained 0.123456789 where they read 0.123457 would see its
    settings as others'. FieldError naming the axis otherwise."""
    for name, space in design.spaces().items():
        if parse_space(describe_space(space)) != space:
            raise FieldError(name, f"{describe_space(space, exact=True)} has more digits than a study stores "
                                   f"({describe_space(space)}): give the values as stored")
