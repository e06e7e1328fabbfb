"""The two install routes list the same pinned packages, and a package carries the files its code reads."""

import fnmatch
import re
import tomllib

import yaml

from conftest import ROOT


def pins_from_pyproject() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [s for group in project["optional-dependencies"].values() for s in group]
    return dict(_split(spec, "==") for spec in specs)


def pins_from_environment() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pins = {}
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            pins.update(_split(spec, "==") for spec in entry["pip"])
        elif not entry.startswith(("python", "pip")):
            pins.update([_split(entry, "=")])
    return pins


def _split(spec: str, sep: str) -> tuple[str, str]:
    name, version = spec.split("#")[0].strip().split(sep)
    return name.strip().lower(), version.strip()


def test_every_dependency_is_pinned_exactly():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        assert re.fullmatch(r"[a-z0-9-]+==[0-9.]+", spec.replace(" ", "")), spec


def test_environment_yml_lists_the_same_packages_as_pyproject():
    assert pins_from_environment() == pins_from_pyproject()


def test_environment_yml_is_a_conda_environment():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["name"] == "initstudy" and "conda-forge" in env["channels"]
    assert "python=3.11" in env["dependencies"]


def test_source_files_the_code_compiles_are_package_data():
    """A C file beside a module is compiled from the installed package: a wheel must carry it."""
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    sources = sorted(ROOT.glob("*/*.c"))
    assert sources
    for source in sources:
        package = source.parent.name
        assert any(fnmatch.fnmatch(source.name, pattern) for pattern in package_data.get(package, [])), source
