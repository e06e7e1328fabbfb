"""The edge search's driver: the study loop of `study.runner` with probes of a learning-rate ladder.

A setting's next probe is the rung its bisection asks for (`study.ladder`), read from the stored
probes, so a re-run continues; a probe's seeds are added in rounds until the sequential test decides.
Given to `study.runner.run_study` as its `driver`.
"""

from __future__ import annotations

import time
from collections import Counter

import optuna
from optuna.trial import TrialState

from study import interrupts
from study.ladder import EdgeDesign, setting_key
from study.records import fixed_values, is_trained, point, point_of, probe_verdicts, setting_of, summarise
from study.runner import Search
from study.schedule import MAX_FAILS_PER_SETTING, count_states


class EdgeSearch(Search):
    """Probes of an edge search (`study.ladder`): each trial is one (setting, rung), its seeds trained
    in rounds of the fewest that could reach the sequential test's verdict; the next rung of each
    setting is queued once its last probe is told, one probe per setting at a time."""

    design: EdgeDesign
    _bar_unit = "setting"

    def __init__(self, *args, **kwargs):
        self.trainings = 0
        super().__init__(*args, **kwargs)
        self.test = self.design.test()

    def show_progress(self) -> None:
        """The bar at the settings whose edge is found."""
        states = self.design.bisections(probe_verdicts(self.study))
        self.bar.n = sum(state.next_rung is None for state in states.values())
        self.bar.set_postfix(trainings=self.trainings, refresh=False)
        self.bar.refresh()

    def _bar_total(self) -> int:
        return len(self.design.settings())

    def _models_per_trial(self) -> int:
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
            states = self._queue_probes(study)
            if states[TrialState.WAITING]:
                return True
            if not states[TrialState.RUNNING]:
                return False
            time.sleep(1)

    def _queue_probes(self, study: optuna.Study) -> Counter:
        """Fail silent probes, queue the next rung of every setting that no live probe holds; the states."""
        optuna.storages.fail_stale_trials(study)
        trials, fixed, ladder = study.get_trials(deepcopy=False), fixed_values(study), self.design.ladder()
        busy = {setting_key(setting_of(t, fixed)) for t in trials
                if t.state in (TrialState.RUNNING, TrialState.WAITING)}
        fails = Counter(point_of(t, fixed) for t in trials if t.state == TrialState.FAIL)
        states = self.design.bisections(probe_verdicts(study))
        for setting in self.design.settings():
            key = setting_key(setting)
            rung = states[key].next_rung
            if rung is None or key in busy:
                continue
            params = {**setting, "lr": ladder[rung]}
            if fails[point(params)] < MAX_FAILS_PER_SETTING:
                study.enqueue_trial(params)
        return count_states(study)

    def _seeds_to_train(self, records: dict[int, dict]) -> list[int]:
        """`EdgeDesign.seeds_to_train` of the seeds the probe holds."""
        return self.design.seeds_to_train(self._outcomes(records))

    def _summary(self, records: dict[int, dict]) -> dict:
        summary = summarise(dict(sorted(records.items())), self.design.train_threshold)
        return {**summary, "verdict": self.test.verdict(sum(self._outcomes(records).values()), len(records))}

    def _outcomes(self, records: dict[int, dict]) -> dict[int, bool]:
        """seed -> whether it trained."""
        return {seed: is_trained(r["val_acc"], self.design.train_threshold) for seed, r in records.items()}
