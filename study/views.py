"""Stored studies as Python objects: tables (pandas), pictures (matplotlib) and files, for the API
(`study.load`, the return values of `study.search` and `study.edge`) and the command line alike."""

from __future__ import annotations

import importlib
from pathlib import Path

from study import axes
from study.errors import BadInput
from study.ladder import EdgeDesign
from study.place import StudyPlace


EXPORT_FORMATS = ("csv", "json")


class Study:
    """A stored study: its trials as pandas tables and its pictures as matplotlib Figures.

    `optuna` is the underlying `optuna.Study` for anything else (its trials, user attributes,
    `optuna.visualization`).
    """

    # What its summary and pictures import: seaborn alone takes about a second, Agg 0.2 s.
    LIBRARIES: tuple[str, ...] = ("study.results", "study.plots", "seaborn", "matplotlib.backends.backend_agg")

    def __init__(self, optuna_study, place: StudyPlace):
        self.optuna, self.place = optuna_study, place

    @classmethod
    def import_libraries(cls) -> None:
        """Import what showing such a study needs, ahead of it (`study.workers.run_workers` does so
        while one worker trains the last trial and a core would idle)."""
        for module in cls.LIBRARIES:
            importlib.import_module(module)

    @property
    def name(self) -> str:
        return self.place.name

    def frame(self):
        """One row per (COMPLETE setting, seed): number, every axis (`study.axes`), seed, val_acc,
        trained, test_acc, diverged, diverged_step (`results.seed_frame`); `export` writes it."""
        from study.results import seed_frame

        return seed_frame(self.optuna)

    def trials(self):
        """One row per COMPLETE setting: its summary over seeds (mean_val_acc, worst_acc, frac_trained...);
        `export` writes it."""
        from study.results import trials_frame

        return trials_frame(self.optuna)

    def heatmap(self, metric: str = "frac_trained", x: str = "leak", y: str = "sub"):
        """One metric's heatmap (x by y: leak by sub unless asked; a panel per combination of the
        other axes that vary) as a matplotlib Figure."""
        check_axes(x, y)
        from study.plots import HEATMAP_METRICS, heatmap_figure, log_axes

        metrics = [m[0] for m in HEATMAP_METRICS]
        if metric not in metrics:
            raise BadInput(f"no heatmap of {metric!r}: choose one of {', '.join(metrics)}")
        trials = self.trials()
        if trials.empty:
            raise BadInput(f"study {self.name!r} has no COMPLETE trial yet")
        return heatmap_figure(trials, metric, log_axes(self.optuna), x, y)

    def figures(self, x: str = "leak", y: str = "sub") -> dict:
        """Every picture the command line draws for the study, by file name; heatmaps x by y."""
        check_axes(x, y)
        from study.plots import study_figures

        return study_figures(self.optuna, x, y)

    def activations(self, number: int, seed: int, artifacts: str | None = None):
        """Trial `number`'s seed `seed` as the lesson's activation pictures (a matplotlib Figure), drawn
        from its stored history; `artifacts`: the store its machines named (`--artifacts`)."""
        from study.artifacts import artifact_store
        from study.seed_pictures import seed_activations

        return seed_activations(self.optuna, artifact_store(artifacts, self.place), number, seed)

    def save_figures(self, out_dir: str | Path | None = None, x: str = "leak", y: str = "sub") -> list[Path]:
        """The pictures as PNGs in `out_dir` (default: studies/NAME beside the database)."""
        from study.plots import save_figures

        return save_figures(self.figures(x, y), Path(out_dir) if out_dir else self.place.out_dir())

    def export(self, out_dir: str | Path | None = None, format: str = "csv") -> list[Path]:
        """`frame()` as seeds.csv and `trials()` as settings.csv (or .json, records) in `out_dir`
        (default: studies/NAME beside the database), for pandas, W&B, MLflow or a spreadsheet."""
        if format not in EXPORT_FORMATS:
            raise BadInput(f"no export format {format!r}: choose one of {', '.join(EXPORT_FORMATS)}")
        out = Path(out_dir) if out_dir else self.place.out_dir()
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, table in (("seeds", self.frame()), ("settings", self.trials())):
            paths.append(out / f"{name}.{format}")
            if format == "csv":
                table.to_csv(paths[-1], index=False)
            else:
                table.to_json(paths[-1], orient="records", indent=1)
        return paths

    def report(self, out_dir: str | Path | None = None) -> Path:
        """report.md with its pictures in `out_dir` (default: studies/NAME beside the database)."""
        from study.report import write_report

        return write_report(self.optuna, Path(out_dir) if out_dir else self.place.out_dir())

    def summary(self) -> str:
        """The top settings by mean accuracy and by worst seed, as text."""
        from study.results import summary_table

        return summary_table(self.optuna)

    def __repr__(self) -> str:
        from optuna.trial import TrialState

        n = len(self.optuna.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        return f"<study {self.name!r}: {n} COMPLETE settings>"


def check_axes(x: str, y: str) -> None:
    """x and y of a heatmap: two different searched axes."""
    if x not in axes.NAMES or y not in axes.NAMES or x == y:
        raise BadInput(f"heatmap axes {x!r} by {y!r}: choose two different of {', '.join(axes.NAMES)}")



class Edge(Study):
    """A stored edge search (`study.ladder`): its table of edges, its probes, its pictures."""

    LIBRARIES = (*Study.LIBRARIES, "study.edge_plots")

    def __init__(self, optuna_study, place: StudyPlace, design: EdgeDesign):
        super().__init__(optuna_study, place)
        self.design = design

    def table(self):
        """One row per setting: max_stable_lr, first_unstable_lr, trainings, ... (`results.EDGE_COLUMNS`)."""
        from study.results import edge_table

        return edge_table(self.optuna, self.design)

    def laws(self):
        """One row per setting the search measured at two or more momenta or init scales: the edge's
        law across them (lr90 proportional to (1 - momentum)^exponent, or init_scale^exponent), its
        interval and tests (`results.LAW_COLUMNS`, `study.edge_law`). Empty when no axis varies."""
        from study.results import law_table, seed_outcomes

        return law_table(seed_outcomes(self.optuna))

    def probes(self):
        """One row per probe (setting, lr): verdict, trained of n_seeds, exact interval, accuracy of trained seeds."""
        from study.results import probe_frame

        return probe_frame(self.optuna)

    def figures(self, x: str = "leak", y: str = "sub") -> dict:
        """The edge's heatmap (leak by sub, the only axes it takes) and its curves, by file name."""
        if (x, y) != ("leak", "sub"):
            raise BadInput(f"an edge search's heatmap is leak by sub, not {x} by {y}")
        from study.edge_plots import edge_figures

        adaptive = self.design.adaptive()
        rates = self.design.ladder() if self.design.method == "bisect" else (adaptive.low, adaptive.high)
        return edge_figures(self.table(), self.probes(), rates, fitted=self.design.method == "adaptive")

    def cost(self) -> str:
        """The trainings used against a fixed 10-seed sweep of the same rungs."""
        from study.results import cost_line

        return cost_line(self.table(), self.design)

    def save(self, out_dir: str | Path | None = None) -> list[Path]:
        """edge.csv (`table()`), edge_laws.csv (`laws()`, where an axis varies) and the pictures in
        `out_dir` (default: studies/NAME beside the database): what `python -m study edge` writes.
        Returns their paths, edge.csv first."""
        from study.plots import save_figures

        out = Path(out_dir) if out_dir else self.place.out_dir()
        out.mkdir(parents=True, exist_ok=True)
        self.table().to_csv(out / "edge.csv", index=False)
        laws, written = self.laws(), [out / "edge.csv"]
        if len(laws):
            laws.to_csv(out / "edge_laws.csv", index=False)
            written.append(out / "edge_laws.csv")
        return [*written, *save_figures(self.figures(), out)]


class Dynamics(Study):
    """A stored dynamics study (`study.experiments.dynamics`): its seeds' first steps and outcomes."""

    LIBRARIES = (*Study.LIBRARIES, "study.dynamics_tables", "study.dynamics_plots")

    def steps(self):
        """One row per measured step of every seed: the setting, seed, step, loss, lambda_max, ratio
        (lr x lambda_max / (2 (1 + momentum))), grad_norm, converged, products."""
        from study.dynamics_tables import step_frame

        return step_frame(self.optuna)

    def outcomes(self):
        """One row per seed: the setting, seed, outcome, diverged_step, val_acc, peak_ratio, peak_step."""
        from study.dynamics_tables import outcome_frame

        return outcome_frame(self.optuna)

    def figures(self, x: str = "leak", y: str = "sub") -> dict:
        """The study's picture, by file name: each seed's ratio and loss along its first steps."""
        from study.dynamics_plots import dynamics_figure

        return {"dynamics": dynamics_figure(self.steps(), self.outcomes())}

    def outcome_summary(self):
        """One row per setting and rate: each outcome's count with its exact interval, and the peak
        ratio of diverged against trained seeds over their common first steps, with its rank test."""
        from study.dynamics_tables import outcome_summary

        return outcome_summary(self.outcomes(), self.steps())
