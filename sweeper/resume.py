"""Interrupted trials go on where they stopped, in a trial that replaces them.

A trial's job records, when it starts, where its checkpoint is and which MLflow run it logs to (user attrs
`checkpoint`, `mlflow_run_id`: sweeper.job.SweepTrial.record). A trial that ends interrupted (Ctrl-C, SIGTERM:
FAIL with user attr `interrupted`) cannot be reopened, as Optuna never moves a finished trial back to RUNNING.
So, before proposing any new configuration, the sweep creates one RUNNING trial per interrupted one, in a single
storage call: the same params and distributions, the same constraint values and measurements, and its
intermediate values, so that a pruner reads one history (`resumes` = the interrupted trial's number). Its job
gets the checkpoint's path (environment variable SWEEPER_RESUME_FROM, sweeper/runners.py: identity) and goes on
through the single run's resume path: the checkpoint's epoch, model, optimizer and MLflow run.

Trials failed for a stale heartbeat (their worker was SIGKILLed or lost) are proposed again from scratch, as
before: tests/test_sweep_faults.py keeps that behaviour (a new trial and a new run; the old run KILLED).
Several workers may replace the same trial at once: each re-reads the study after creating its replacement,
and the higher number gives way (FAIL, `withdrawn`), as for the last free slot.
"""
import logging
import os
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from sweeper import signals
from sweeper.propose import Proposal
from sweeper.records import CHECKPOINT, INTERRUPTED, LAUNCHED, MLFLOW_RUN_ID, OVERRIDES, RESUMES, WITHDRAWN

log = logging.getLogger(__name__)

# User attrs the replacement does not inherit: how the interrupted one ended, and what the job writes itself.
NOT_INHERITED = (INTERRUPTED, RESUMES, CHECKPOINT, MLFLOW_RUN_ID)


@dataclass
class Replacement(Proposal):
    resume_from: str = ""     # the interrupted trial's checkpoint file
    resumes: int = -1         # the interrupted trial's number


def resumable(trials):
    """Interrupted trials with a checkpoint on disk that no trial has replaced yet, oldest first."""
    replaced = {t.user_attrs[RESUMES] for t in trials if RESUMES in t.user_attrs
                and not t.user_attrs.get(WITHDRAWN)}
    return [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get(INTERRUPTED)
            and t.user_attrs.get(LAUNCHED) and t.number not in replaced
            and os.path.isfile(str(t.user_attrs.get(CHECKPOINT, "")))]


class Resumer:
    def __init__(self, store):
        self.store = store

    def next(self, study):
        """A Replacement for the oldest resumable trial, RUNNING and held by this process; None if there is none."""
        for old in resumable(study.get_trials(deepcopy=False)):
            proposal = self.replace(study, old)
            if proposal is not None:
                return proposal
        return None

    def replace(self, study, old):
        user_attrs = {k: v for k, v in old.user_attrs.items() if k not in NOT_INHERITED}
        user_attrs[RESUMES] = old.number
        template = optuna.trial.create_trial(
            state=TrialState.RUNNING, params=old.params, distributions=old.distributions, user_attrs=user_attrs,
            system_attrs=old.system_attrs, intermediate_values=old.intermediate_values)
        storage = self.store.storage
        with signals.held():
            trial_id = storage.create_new_trial(self.store.study_id, template_trial=template)
            number = storage.get_trial(trial_id).number
            self.store.heartbeats.hold(trial_id, number)
        proposal = Replacement(optuna.trial.Trial(study, trial_id), trial_id, list(old.user_attrs.get(OVERRIDES, [])),
                               resume_from=str(old.user_attrs[CHECKPOINT]), resumes=old.number,
                               note=f"resumes #{old.number}")
        twins = [t.number for t in study.get_trials(deepcopy=False)
                 if t.user_attrs.get(RESUMES) == old.number and t.number != number
                 and not t.user_attrs.get(WITHDRAWN) and t.state != TrialState.FAIL]
        if twins and min(twins) < number:  # another worker replaced it at the same moment
            self.store.close(study, proposal, TrialState.FAIL, attrs={WITHDRAWN: True})
            return None
        epochs = max(old.intermediate_values, default=0)
        log.info(f"  trial #{number} resumes interrupted trial #{old.number}"
                 + (f" after step {epochs}" if epochs else "") + f" from {old.user_attrs[CHECKPOINT]}")
        return proposal
