"""The edge search's driver: the study loop of `study.runner` with probes of learning rates.

A setting's next probe is read from its stored probes, so a re-run (or another machine) continues:
- `bisect`: the rung its bisection asks for (`study.ladder`); a probe's seeds are added in rounds
  until the sequential test decides;
- `adaptive`: the rate where one round of `round_seeds` seeds tells most about lr90
  (`study.adaptive`); each probe is one round, of seeds no other probe of the setting used.
Given to `study.runner.run_study` as its `driver`.
"""

from __future__ import annotations

from collections import Counter

import optuna
from optuna.trial import TrialState

from study import interrupts
from study.ladder import EdgeDesign, setting_key
from study.records import (fixed_values, is_trained, point, point_of, probe_outcomes, probe_verdicts, probes_by_setting,
                           seed_records, setting_of, study_threshold, summarise)
from study.runner import Search
from study.schedule import MAX_FAILS_PER_SETTING, count_states, held_elsewhere, suggest
from study.workers import wait_for_others

SEEDS_ATTR = "probe_seeds"  # an adaptive probe's seeds, a user attribute given when it is queued


def next_rates(study: optuna.Study, design: EdgeDesign, plans: dict | None = None) -> dict[tuple, float | None]:
    """Each setting's next rate to probe (by `setting_key`), None once its edge is known. `plans`
    caches the adaptive choices by (setting, seeds so far): they cost milliseconds each, the fit a
    tenth of a second, and the loop asks every second while it waits."""
    if design.method == "bisect":
        ladder = design.ladder()
        return {key: None if state.next_rung is None else ladder[state.next_rung]
                for key, state in design.bisections(probe_verdicts(study)).items()}
    plans = {} if plans is None else plans
    found, threshold, adaptive, rates = probes_by_setting(study), study_threshold(study), design.adaptive(), {}
    for setting in design.settings():
        key = setting_key(setting)
        lrs, trained = probe_outcomes(found.get(key, []), threshold)
        if (key, len(lrs)) not in plans:
            plans[key, len(lrs)] = adaptive.next_step(lrs, trained)[0]
        rates[key] = plans[key, len(lrs)]
    return rates


class EdgeSearch(Search):
    """Probes of an edge search: each trial is one (setting, rate); bisect: its seeds trained in
    rounds of the fewest that could reach the sequential test's verdict; adaptive: one round. The
    next probe of each setting is queued once its last probe is told, one per setting at a time."""

    design: EdgeDesign
    _bar_unit = "setting"

    def __init__(self, *args, **kwargs):
        self.trainings, self.plans = 0, {}
        super().__init__(*args, **kwargs)
        self.test = self.design.test()

    def show_progress(self) -> None:
        """The bar at the settings whose edge is found, and the trainings their probes hold (the
        workers' too: a watching process trains none itself)."""
        self.bar.n = sum(rate is None for rate in next_rates(self.study, self.design, self.plans).values())
        stored = sum(len(seed_records(t)) for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        self.bar.set_postfix(trainings=max(self.trainings, stored), refresh=False)
        self.bar.refresh()

    def _bar_total(self) -> int:
        return len(self.design.settings())

    def _models_per_trial(self) -> int:
        if self.design.method == "adaptive":
            return self.design.round_seeds
        return self.design.test().seeds_to_verdict(0, 0)  # the first round of every probe

    def _seeds_stored(self, count: int) -> None:
        self.trainings += count
        self.bar.set_postfix(trainings=self.trainings)

    def _room(self, states: Counter) -> int:
        return states[TrialState.WAITING]

    def _next_step(self, study: optuna.Study) -> bool:
        """True when a probe waits; False once every setting's edge is found (or its probes failed
        MAX_FAILS_PER_SETTING times). Waits while other workers' probes run."""
        while True:
            interrupts.check()
            states = self.queue(study)
            if states[TrialState.WAITING]:
                return True
            if not states[TrialState.RUNNING]:
                # Done, unless a probe was told between the queue's reading of the trials and its count:
                # its successor is queued by a second look.
                return bool(self.queue(study)[TrialState.WAITING])
            wait_for_others(1)

    def queue(self, study: optuna.Study) -> Counter:
        """Fail silent probes, queue the next probe of every setting that no live probe holds; the states."""
        optuna.storages.fail_stale_trials(study)
        trials, fixed = study.get_trials(deepcopy=False), fixed_values(study)
        busy = {setting_key(setting_of(t, fixed)) for t in trials
                if t.state in (TrialState.RUNNING, TrialState.WAITING)}
        fails = Counter(point_of(t, fixed) for t in trials if t.state == TrialState.FAIL)
        rates, found = next_rates(study, self.design, self.plans), probes_by_setting(study)
        for setting in self.design.settings():
            key = setting_key(setting)
            if rates[key] is None or key in busy:
                continue
            params = {**setting, "lr": rates[key]}
            if fails[point(params)] < MAX_FAILS_PER_SETTING:
                seeds = self.design.probe_seeds(len(found.get(key, [])))  # a retry draws the same seeds
                study.enqueue_trial(params, user_attrs={SEEDS_ATTR: seeds} if self.design.method == "adaptive" else None)
        return count_states(study)

    def _start(self, trial: optuna.Trial) -> dict:
        """Bisect: as a search's. Adaptive: a setting may be probed twice at one rate (its seeds
        differ), so a probe is held elsewhere when another holds the same setting and seeds."""
        if self.design.method == "bisect":
            return super()._start(trial)
        params = suggest(trial, self.design)
        fixed = fixed_values(trial.study)
        if held_elsewhere(trial, lambda t: (setting_key(setting_of(t, fixed)), tuple(t.user_attrs.get(SEEDS_ATTR, ())))):
            raise optuna.TrialPruned("another probe holds these seeds of this setting")  # a race between workers
        return params

    def _seed_pool(self, trial: optuna.Trial) -> tuple[int, ...]:
        """Adaptive: the probe's own round of seeds (a failed probe's finished ones are reused)."""
        if self.design.method == "adaptive":
            return tuple(trial.user_attrs[SEEDS_ATTR])
        return self.seeds

    def _seeds_to_train(self, trial: optuna.Trial, records: dict[int, dict]) -> list[int]:
        """Adaptive: the probe's round of seeds; bisect: `EdgeDesign.seeds_to_train` of those it holds."""
        if self.design.method == "adaptive":
            return [seed for seed in self._seed_pool(trial) if seed not in records]
        return self.design.seeds_to_train(self._outcomes(records))

    def _summary(self, records: dict[int, dict]) -> dict:
        summary = summarise(dict(sorted(records.items())), self.design.train_threshold)
        if self.design.method == "adaptive":
            return {**summary, "verdict": ""}  # a probe of the curve: no sequential test
        return {**summary, "verdict": self.test.verdict(sum(self._outcomes(records).values()), len(records))}

    def _outcomes(self, records: dict[int, dict]) -> dict[int, bool]:
        """seed -> whether it trained."""
        return {seed: is_trained(r["val_acc"], self.design.train_threshold) for seed, r in records.items()}
