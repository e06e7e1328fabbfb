"""Signal propagation through a 50-layer MLP at initialisation, on real FashionMNIST inputs."""

import csv

import pytest

from conftest import assert_one_line_error, run_cli
from study.experiments.depth import DEPTH_INITS, deep_mlp, last_to_first_std, profile
from study.model import activations

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def batch(fashion):
    return fashion.x_train[:256]


def profiles_for(batch, init, leak, sub=0.0):
    return [profile(deep_mlp(50, 256, leak, sub, init, 1.0, seed, batch), batch, init, seed) for seed in SEEDS]


def test_kaiming_keeps_relu_activations_alive_where_lecun_lets_them_vanish(batch):
    kaiming = last_to_first_std(profiles_for(batch, "kaiming", 0.0), "kaiming")
    lecun = last_to_first_std(profiles_for(batch, "lecun", 0.0), "lecun")
    assert 0.3 <= kaiming <= 3
    assert lecun < 1e-4  # the variance halves at every one of 49 layers: 2**-24.5 in std


def test_kaiming_with_the_leak_in_its_gain_holds_for_leak_half(batch):
    assert 0.3 <= last_to_first_std(profiles_for(batch, "kaiming", 0.5), "kaiming") <= 3


@pytest.mark.parametrize("leak, sub", [(0.0, 0.0), (0.1, 0.4)])
def test_lsuv_gives_every_layer_unit_std_on_its_batch(batch, leak, sub):
    (p,) = [profile(deep_mlp(50, 256, leak, sub, "lsuv", 1.0, 0, batch), batch, "lsuv", 0)]
    assert all(abs(s - 1) < 1e-3 for s in p.std)


def test_depth_collapses_the_representations_rank_under_relu(batch):
    (p,) = [profile(deep_mlp(50, 256, 0.0, 0.0, "kaiming", 1.0, 0, batch), batch, "kaiming", 0)]
    assert p.effective_rank[-1] < p.effective_rank[0] / 3
    assert all(len(s) == 256 and s[0] == 1.0 for s in p.singular_values)


def test_models_have_the_asked_depth(batch):
    model = deep_mlp(50, 256, 0.1, 0.4, "default", 1.0, 0, batch)
    assert len(activations(model)) == 50


def test_depth_command_writes_figures_and_their_numbers(tmp_path):
    proc = run_cli("depth", "--depth", "6", "--width", "32", "--seeds", "0,1", "--batch", "64", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    for init in DEPTH_INITS:
        assert f"{init:>8}:" in proc.stdout
    names = {p.name for p in tmp_path.iterdir()}
    assert {"depth_std.png", "depth_spectra.png", "depth_std_sweep.png", "depth_profile.csv",
            "depth_std_sweep.csv"} <= names
    with open(tmp_path / "depth_profile.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(DEPTH_INITS) * 2 * 6
    with open(tmp_path / "depth_std_sweep.csv") as f:
        assert len(list(csv.reader(f))) == 1 + 9


def test_depth_command_refuses_bad_values(tmp_path):
    assert_one_line_error(run_cli("depth", "--leak", "1.5", "--out", str(tmp_path)), "--leak must be in [0, 1)")
    assert_one_line_error(run_cli("depth", "--depth", "0", "--out", str(tmp_path)), "--depth and --width")
