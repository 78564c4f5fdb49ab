"""The sweep's MLflow parent run: one per study, its trials' runs as children, closed whatever happens.

Optional: with `hydra.sweeper.mlflow` unset (or no tracking_uri) Tracking logs nothing, and the sweep calls it
all the same.
"""
import logging
import os

import optuna
from optuna.trial import TrialState

from sweeper import secrets
from sweeper.stores import first_open, make_sqlite_folder

log = logging.getLogger(__name__)


class Tracking:
    """The MLflow side of a sweep: None-safe, so a sweep without MLflow calls the same methods."""

    def __init__(self, settings):
        settings = settings or {}
        self.uri = settings.get("tracking_uri")
        self.experiment = settings.get("experiment") or "Default"
        self.register_as = settings.get("register_best")  # a Model Registry name for the best trial's model
        self.client = None

    @property
    def enabled(self):
        return bool(self.uri)

    def open(self):
        """Create the store (once, under the sqlite lock) and the experiment; fail in seconds if unreachable."""
        if not self.enabled:
            return None
        from mlflow import MlflowClient
        real = secrets.reveal(self.uri)
        make_sqlite_folder(real)
        with first_open(real):
            self.client = MlflowClient(real)
            found = self.client.get_experiment_by_name(self.experiment)
            try:
                return found.experiment_id if found else self.client.create_experiment(self.experiment)
            except Exception as err:  # another worker created it a moment ago
                if "already exists" in str(err):
                    return self.client.get_experiment_by_name(self.experiment).experiment_id
                raise

    def parent_run(self, study, storage):
        """The study's one parent run: created by the first worker, reused by re-runs and other workers."""
        if not self.enabled:
            return None
        experiment_id = self.open()
        run_id = study.user_attrs.get("mlflow_parent_run_id")
        if run_id:
            if self._is_active(run_id):
                self.client.update_run(run_id, status="RUNNING")
                return run_id
            log.warning(f"The study's MLflow parent run {run_id} is not in {secrets.mask_url(self.uri)} (deleted, or "
                        f"the study was begun with another tracking URI): this sweep's runs go under a new parent run.")
        run = self.client.create_run(experiment_id, run_name=f"sweep-{study.study_name}",
                                     tags={"sweep": "parent", "study_name": study.study_name})
        study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
        # Two workers starting together may both create one; the study keeps the last, and both use it.
        stored = optuna.load_study(study_name=study.study_name, storage=storage).user_attrs["mlflow_parent_run_id"]
        if stored != run.info.run_id:
            self.client.delete_run(run.info.run_id)
        return stored

    def register_best(self, parent, trial_number):
        """Register the best trial's logged model (its run's `model_uri` tag) under `register_best`; returns
        "name version N", or None when the trial's run logged no model."""
        import mlflow
        experiment_id = self.client.get_run(parent).info.experiment_id
        runs = self.client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}' and "
                                                        f"tags.trial_number = '{trial_number}'", max_results=10)
        uris = [r.data.tags["model_uri"] for r in runs if r.data.tags.get("model_uri")]
        if not uris:
            log.warning(f"register_best={self.register_as}: trial #{trial_number}'s run logged no model (model_uri tag)")
            return None
        mlflow.set_tracking_uri(secrets.reveal(self.uri))
        version = mlflow.register_model(uris[0], self.register_as)
        self.client.set_tag(parent, "registered_model", f"{version.name}/{version.version}")
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
        """The study's one parent run, once this worker's trials have ended. Two workers starting at the same
        moment can each keep the parent they created (the study keeps the one written last, and a worker that
        read it before the other wrote keeps its own): the one whose parent the study does not keep moves its
        children under the study's parent and deletes its own. Returns the parent run to summarise on."""
        if not self.enabled or not run_id:
            return run_id
        stored = optuna.load_study(study_name=study.study_name, storage=storage).user_attrs.get("mlflow_parent_run_id")
        if not stored or stored == run_id or not self._is_active(stored):
            return run_id
        experiment_id = self.client.get_run(run_id).info.experiment_id
        children = self.client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{run_id}'",
                                           max_results=10_000)
        for child in children:
            self.client.set_tag(child.info.run_id, "mlflow.parentRunId", stored)
        self.client.delete_run(run_id)
        log.info(f"Another worker's parent run {stored} is the study's: moved this worker's {len(children)} trial "
                 f"runs under it and deleted {run_id}")
        return stored

    def _is_active(self, run_id):
        from mlflow.exceptions import MlflowException
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException:
            return False

    def finish(self, run_id, status="FINISHED"):
        if self.enabled and run_id and self.client is not None:
            try:
                self.client.set_terminated(run_id, status=status)
            except Exception as err:  # noqa: BLE001 - never hide the error that ended the sweep
                log.warning(f"could not mark the MLflow parent run {status}: {err}")

    def close_interrupted(self, study, parent):
        """Child runs that a killed sweep left RUNNING, whose trials are now FAIL (no heartbeat), end as KILLED."""
        if not self.enabled:
            return
        failed = {str(t.number) for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                  if t.user_attrs.get("launched") and "fail_reason" not in t.user_attrs}
        if not failed:
            return
        experiment_id = self.client.get_run(parent).info.experiment_id
        for run in self.client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}' "
                                                            f"and attributes.status = 'RUNNING'", max_results=10_000):
            if run.data.tags.get("trial_number") in failed:
                self.client.set_tag(run.info.run_id, "trial_state", "FAIL")
                self.client.set_tag(run.info.run_id, "error", "interrupted: its sweep was killed during this trial")
                self.client.set_terminated(run.info.run_id, status="KILLED")
