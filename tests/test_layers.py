"""The shape of the code: imports point down the layers only, no module grows past a page count a
newcomer can read, and importing any module changes no global state.

The layers (../shared/ARCHITECTURE.md), lowest first. A module may import its own layer and those
below; every import counts, also one inside a function.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

LAYERS = {
    "declarations": ["study.errors", "study.axes", "study.config", "study.design", "study.place", "study.ladder",
                     "study.sequential", "study.reliability", "study.interrupts", "study.masking", "study.quiet", "study.version",
                     "study.stored_design", "study.dose_response", "study.adaptive", "study.edge_law"],
    "training": ["kernels", "kernels.fused_linear_act", "kernels.activation_stats_cpu", "study.activations", "study.data", "study.stats", "study.model", "study.training",
                 "study.population"],
    "records and storage": ["study.records", "study.faults", "study.storage", "study.artifacts", "study.histories"],
    "drivers": ["study.schedule", "study.fork_server", "study.workers", "study.runner", "study.edge_search", "study.edge_simulation"],
    "readers": ["study.results", "study.dynamics_tables", "study.dynamics_plots", "study.plots", "study.edge_plots", "study.report", "study.views", "study.seed_pictures", "study.dashboard"],
    "experiments": ["study.experiments", "study.experiments.sharpness", "study.experiments.signal", "study.experiments.dynamics",
                    "study.experiments.findings", "study.experiments.findings.plan",
                    "study.experiments.findings.claims", "study.experiments.findings.tables",
                    "study.experiments.findings.curvature", "study.experiments.findings.edges",
                    "study.experiments.findings.first_steps",
                    "study.experiments.findings.document"],
    "face": ["study.api", "study.flags", "study.parser", "study.cli", "study", "study.__main__"],
}
FLOOR = {module: floor for floor, modules in enumerate(LAYERS.values()) for module in modules}
MAX_LINES = 330
OPTIONAL_LIBRARIES = ("boto3",)  # imported only where a user asks for it (s3:// artifacts), not installed here


def module_files() -> dict[str, Path]:
    files = {}
    for path in [*ROOT.glob("study/**/*.py"), *ROOT.glob("kernels/*.py")]:
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The project's modules `path` imports, anywhere in it: `from study import api` is study.api."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{a.name}" for a in node.names} & modules
            found |= submodules
            if node.module in modules and len(submodules) < len(node.names):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names} & modules
    return found


def test_every_module_has_a_layer():
    assert set(module_files()) == set(FLOOR)


def test_imports_point_down_the_layers_only():
    files = module_files()
    upward = [f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
              for module, path in files.items() for target in sorted(imports_of(path, set(files)) - {module})
              if FLOOR[target] > FLOOR[module]]
    assert not upward, "\n".join(upward)


def layer_of(module: str) -> str:
    return list(LAYERS)[FLOOR[module]]


def test_training_and_declarations_know_no_optuna_and_no_pictures():
    for module, path in module_files().items():
        if FLOOR[module] <= FLOOR["study.population"] and module != "study.quiet":
            names = {alias.name.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                     if isinstance(node, (ast.Import, ast.ImportFrom))
                     for alias in ([ast.alias(node.module)] if isinstance(node, ast.ImportFrom) and node.module
                                   else node.names)}
            assert not names & {"optuna", "optuna_dashboard", "matplotlib", "seaborn"}, module


@pytest.mark.parametrize("module", sorted(module_files()))
def test_no_module_is_longer_than_a_newcomer_reads_at_once(module):
    lines = len(module_files()[module].read_text().splitlines())
    limit = MAX_LINES if module.startswith("study") else 700  # the kernel file holds one op whole
    assert lines <= limit, f"{module}: {lines} lines"


def libraries_imported() -> list[str]:
    """Every other library module the project's modules import (torch, scipy, triton, ...)."""
    found = set()
    for path in module_files().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
    own = ("study", "kernels", "benchmarks", "__future__")
    return sorted(name for name in found if name.split(".")[0] not in own + OPTIONAL_LIBRARIES)


@pytest.mark.slow
def test_importing_every_module_changes_no_global_state():
    """What the libraries do when imported (torch and scipy add warning filters, torch.library sets
    TORCHINDUCTOR_CACHE_DIR) is theirs: they are imported first."""
    modules = sorted(m for m in module_files() if m != "study.__main__")
    code = f"""
import json, os, sys, warnings, importlib
for name in {libraries_imported()!r}:
    importlib.import_module(name)
import optuna
before = (optuna.logging.get_verbosity(), list(warnings.filters), dict(os.environ))
for name in {modules!r}:
    importlib.import_module(name)
after = (optuna.logging.get_verbosity(), list(warnings.filters), dict(os.environ))
print(json.dumps({{"verbosity": [before[0], after[0]], "filters_added": len(after[1]) - len(before[1]),
                   "environment": sorted(set(after[2].items()) ^ set(before[2].items()))}}))
"""
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    assert state == {"verbosity": [optuna_info(), optuna_info()], "filters_added": 0, "environment": []}


def optuna_info() -> int:
    import optuna

    return optuna.logging.INFO
