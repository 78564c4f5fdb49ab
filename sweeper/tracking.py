"""The sweep's MLflow parent run: one per study, its trials' runs as children, closed whatever happens.

Optional: with `hydra.sweeper.mlflow` unset (or no tracking_uri) Tracking logs nothing, and the sweep calls it
all the same.
"""
import logging
import os

from optuna.trial import TrialState

from sweeper import compat, mlflow_store, secrets
from sweeper.records import (ERROR, FAIL_REASON, INTERRUPTED, LAUNCHED, MLFLOW_PARENT_RUN_ID, MODEL_URI, PARENT_RUN,
                             REGISTERED_MODEL, STUDY_NAME, SWEEP, TRIAL_NUMBER, TRIAL_STATE)
from sweeper.stores import open_storage
from sweeper.study import is_confirmation

log = logging.getLogger(__name__)


class Tracking:
    """The MLflow side of a sweep: None-safe, so a sweep without MLflow calls the same methods."""

    def __init__(self, settings):
        settings = settings or {}
        self.uri = settings.get("tracking_uri")
        self.experiment = settings.get("experiment") or "Default"
        self.register_as = settings.get("register_best")  # a Model Registry name for the best trial's model
        self.client = None
        self.closed = set()  # numbers of failed trials whose runs close_interrupted has looked at

    @property
    def enabled(self):
        return bool(self.uri)

    def open(self):
        """Create the store (once, under the sqlite lock) and the experiment (sweeper/mlflow_store.py)."""
        if not self.enabled:
            return None
        self.client, experiment_id = mlflow_store.open_experiment(self.uri, self.experiment)
        return experiment_id

    def parent_run(self, study, storage):
        """The study's one parent run: created by the first worker, reused by re-runs and other workers.

        Race-free: workers started in the same second on a fresh study each create a candidate run, and the
        study's user attr `mlflow_parent_run_id` takes the first through a compare-and-set that is atomic
        across processes (sweeper/compat.py: swap_study_user_attr): a database makes it so on the attr table's
        unique key; a journal, by a lock file beside it (`<journal>.swap.lock`) that every worker holds while it
        re-reads the attr, compares and writes; in memory there is one worker. Every other candidate is deleted
        at once and its worker uses the winner. (Set with `Study.set_user_attr`, an
        upsert, a worker that read "absent" before another wrote could overwrite it: each kept its own parent,
        and one killed before its end left a second parent RUNNING.) A stored parent that this store lacks
        (deleted, another tracking URI) is replaced by the same compare-and-set, expecting the stale id."""
        if not self.enabled:
            return None
        experiment_id = self.open()
        attrs, study_id = self._study_attrs(study, storage)
        stored = attrs.get_study_user_attrs(study_id).get(MLFLOW_PARENT_RUN_ID)
        for _ in range(5):  # each pass either returns or sees another worker's newer write
            if stored and mlflow_store.is_active(self.client, stored):
                self.client.update_run(stored, status="RUNNING")
                return stored
            if stored:
                log.warning(f"The study's MLflow parent run {stored} is not in {secrets.mask_url(self.uri)} (deleted, "
                            f"or the study was begun with another tracking URI): this sweep's runs go under a new "
                            f"parent run.")
            mine = self.client.create_run(experiment_id, run_name=f"sweep-{study.study_name}",
                                          tags={SWEEP: "parent", STUDY_NAME: study.study_name}).info.run_id
            won = compat.swap_study_user_attr(attrs, study_id, MLFLOW_PARENT_RUN_ID, stored, mine)
            if won == mine:
                return mine
            self.client.delete_run(mine)  # another worker's candidate was set first
            log.info(f"Another worker created the study's MLflow parent run {won} a moment before: using it")
            stored = won
        raise RuntimeError(f"the study's user attr {MLFLOW_PARENT_RUN_ID} kept changing: {stored}")

    @staticmethod
    def _study_attrs(study, storage):
        """(storage object, study id) for reading and swapping the study's user attrs; `storage` is the sweep's
        storage object or a URL."""
        if isinstance(storage, str):
            storage = open_storage(secrets.reveal(storage))
        elif storage is None:  # no storage object at hand: the study's public attrs (one process, no race)
            return _StudyAttrs(study), None
        return storage, storage.get_study_id_from_name(study.study_name)

    def register_best(self, parent, trial_number):
        """Register the best trial's logged model (its run's `model_uri` tag) under `register_best`; returns
        "name version N", or None when the trial's run logged no model."""
        import mlflow
        experiment_id = self.client.get_run(parent).info.experiment_id
        runs = self.client.search_runs([experiment_id], f"tags.{PARENT_RUN} = '{parent}' and "
                                                        f"tags.{TRIAL_NUMBER} = '{trial_number}'", max_results=10)
        uris = [r.data.tags[MODEL_URI] for r in runs if r.data.tags.get(MODEL_URI)]
        if not uris:
            log.warning(f"register_best={self.register_as}: trial #{trial_number}'s run logged no model (model_uri tag)")
            return None
        mlflow.set_tracking_uri(secrets.reveal(self.uri))
        version = mlflow.register_model(uris[0], self.register_as)
        self.client.set_tag(parent, REGISTERED_MODEL, f"{version.name}/{version.version}")
        return f"{version.name} version {version.version}"

    def browse_hint(self, run_id):
        """How to open the MLflow UI on this sweep's parent run (one line; passwords masked)."""
        run = self.client.get_run(run_id)
        page = f"#/experiments/{run.info.experiment_id}/runs/{run_id}"
        uri = secrets.mask_url(self.uri)
        if uri.startswith(("http://", "https://")):
            return f"Browse it: {uri.rstrip('/')}/{page}"
        if uri.startswith("sqlite:///") and not os.path.isabs(uri[len("sqlite:///"):]):
            uri = "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])  # works from any folder
        return f"Browse it: mlflow ui --backend-store-uri {uri}   then open http://127.0.0.1:5000/{page}"

    def settle(self, study, storage, run_id):
        """The study's one parent run, once this worker's trials have ended. parent_run makes two parents
        impossible among workers of this version, on a database and on a journal alike (its compare-and-set is
        atomic on both: the attr table's unique key, the journal's lock file); a study whose attr was
        overwritten anyway (an older worker, a hand edit) is still reconciled: the worker whose parent the study
        does not keep moves its children under the study's parent and deletes its own. Returns the parent run to
        summarise on."""
        if not self.enabled or not run_id:
            return run_id
        attrs, study_id = self._study_attrs(study, storage)  # a URL (a journal's too) or the sweep's storage object
        stored = attrs.get_study_user_attrs(study_id).get(MLFLOW_PARENT_RUN_ID)
        if not stored or stored == run_id or not mlflow_store.is_active(self.client, stored):
            return run_id
        moved = mlflow_store.children(self.client, run_id)
        for child in moved:
            self.client.set_tag(child.info.run_id, PARENT_RUN, stored)
        self.client.delete_run(run_id)
        log.info(f"Another worker's parent run {stored} is the study's: moved this worker's {len(moved)} trial "
                 f"runs under it and deleted {run_id}")
        return stored

    def finish(self, run_id, status="FINISHED"):
        if self.enabled and run_id and self.client is not None:
            try:
                self.client.set_terminated(run_id, status=status)
            except Exception as err:  # noqa: BLE001 - never hide the error that ended the sweep
                log.warning(f"could not mark the MLflow parent run {status}: {err}")

    def close_interrupted(self, study, parent):
        """End the trial runs that their own process can no longer end. A trial that the study has failed while
        its run is still RUNNING lost its process: a worker SIGKILLed (the reaper, StudyStore.fail_dead_trials,
        failed it once its heartbeat was grace_period old), a Ctrl-C (user attr `interrupted`), or a pool's
        trial process that died (user attr `fail_reason`). Its run ends KILLED (FAILED for a crash) with tag
        trial_state=FAIL and the reason as tag `error`. The trials are the search's launched ones and the
        confirmation runs (sweeper/confirm.py), whose job runs are children of their configuration's run
        (`sweep=confirm`) under the parent. The sweep's loop and the confirmation's call this right after each
        reaping, so whichever worker reaps the trial closes its run; the summary calls it once more. Each failed
        trial is looked up once per process; a store that refuses is one warning line, never the sweep's end."""
        if not self.enabled or not parent:
            return
        failed = {str(t.number): t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                  if (t.user_attrs.get(LAUNCHED) or is_confirmation(t)) and str(t.number) not in self.closed}
        if not failed:
            return
        try:
            for run in self._running_trial_runs(parent, any(map(is_confirmation, failed.values()))):
                trial = failed.get(run.data.tags.get(TRIAL_NUMBER))
                if trial is None:
                    continue
                status, reason = dead_run_reason(trial)
                mlflow_store.end_run(self.client, run.info.run_id, status, {TRIAL_STATE: "FAIL", ERROR: reason})
                log.info(f"  trial #{trial.number}: its MLflow run ended {status} ({reason})")
        except Exception as err:  # noqa: BLE001 - tried again at the next reaping and at the summary
            log.warning(f"could not end the MLflow runs of failed trials {sorted(failed, key=int)}: "
                        f"{type(err).__name__}: {secrets.mask_url(str(err)).splitlines()[0] if str(err) else ''}")
            return
        self.closed |= set(failed)

    def _running_trial_runs(self, parent, confirmations):
        """The RUNNING job runs under `parent`, and (if asked) those under its confirmed configurations' runs."""
        runs = list(mlflow_store.children(self.client, parent, running_only=True))
        if confirmations:
            experiment_id = self.client.get_run(parent).info.experiment_id
            for group in self.client.search_runs([experiment_id], f"tags.{PARENT_RUN} = '{parent}' and "
                                                                  f"tags.{SWEEP} = 'confirm'", max_results=10_000):
                runs += mlflow_store.children(self.client, group.info.run_id, running_only=True)
        return runs


class _StudyAttrs:
    """A study's user attrs through the two storage methods swap_study_user_attr calls."""

    def __init__(self, study):
        self.study = study

    def get_study_user_attrs(self, study_id):
        return self.study.user_attrs

    def set_study_user_attr(self, study_id, key, value):
        self.study.set_user_attr(key, value)


def dead_run_reason(trial):
    """(status, reason) for the MLflow run of a FAIL trial whose process could not end it."""
    if FAIL_REASON in trial.user_attrs:
        return "FAILED", str(trial.user_attrs[FAIL_REASON])
    if trial.user_attrs.get(INTERRUPTED):
        return "KILLED", "interrupted: its sweep was stopped (Ctrl-C) during this trial"
    return "KILLED", ("interrupted: its worker stopped (killed?) during this trial; the study failed it once its "
                      "heartbeat was grace_period seconds old")
