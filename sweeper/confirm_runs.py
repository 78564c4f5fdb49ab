"""Confirmed winners in MLflow (sweeper/confirm.py is the retraining): under the sweep's parent run, one run
per confirmed configuration (`confirm-#N`, tags `sweep=confirm`, `confirm_of=N`; metrics `<objective>_mean`,
`<objective>_std`, `seeds_complete`, `search_<objective>`), found again on a rerun; each retraining's job run is
its child, tagged `confirm_of` and `seed`."""
import logging

from sweeper import mlflow_store, secrets
from sweeper.records import CONFIRM_OF, PARENT_RUN, SEED, SEEDS, SWEEP, TRIAL_NUMBER

log = logging.getLogger(__name__)


class ConfirmRuns:
    """The MLflow side: one run per confirmed configuration under the parent run, found again on a rerun. A store
    that refuses is one warning line per configuration, never the sweep's end: the results are in the study."""

    def __init__(self, tracking, parent):
        self.tracking, self.parent, self.ids = tracking, parent, {}
        self.broken = set()  # configurations (search trial numbers) whose run the store refused: warned once
        self.enabled = bool(tracking is not None and tracking.enabled and parent and tracking.client is not None)

    def open(self, trial):
        """The configuration's run id (created, or found again); None without MLflow or when the store refused
        to make it (its retrainings' job runs then go under the parent run)."""
        if not self.enabled:
            return None
        if trial.number not in self.ids and trial.number not in self.broken:
            try:
                self._open(trial)
            except Exception as err:  # noqa: BLE001 - the retrainings still train and are recorded in the study
                self._refused(trial, "could not be opened", err)
        return self.ids.get(trial.number)

    def _open(self, trial):
        client = self.tracking.client
        experiment_id = client.get_run(self.parent).info.experiment_id
        found = client.search_runs([experiment_id], f"tags.{PARENT_RUN} = '{self.parent}' and tags.{SWEEP} = "
                                                    f"'confirm' and tags.{CONFIRM_OF} = '{trial.number}'")
        if found:
            self.ids[trial.number] = found[0].info.run_id
            client.update_run(found[0].info.run_id, status="RUNNING")
            return
        run_id = client.create_run(experiment_id, run_name=f"confirm-#{trial.number}", tags={
            PARENT_RUN: self.parent, SWEEP: "confirm", CONFIRM_OF: str(trial.number)}).info.run_id
        self.ids[trial.number] = run_id  # from now on it is ended, whatever happens next
        for key, value in trial.params.items():
            client.log_param(run_id, key, value)

    def record(self, outcome, names):
        """Each configuration's mean, std and counts; its job runs tagged with their seed; then FINISHED (FAILED
        for a configuration whose run the store refused)."""
        if not self.enabled:
            return
        client, name = self.tracking.client, ((names or [None])[0] or "value")
        for row in outcome.rows:
            run_id = self.open(row.trial)
            if run_id is None or row.trial.number in self.broken:
                continue  # warned when it was refused
            try:
                metrics = {f"search_{name}": row.trial.value, "seeds_complete": len(row.values),
                           "seeds_failed": row.failed}
                if row.mean is not None:
                    metrics[f"{name}_mean"] = row.mean
                if row.std is not None:
                    metrics[f"{name}_std"] = row.std
                for key, value in metrics.items():
                    client.log_metric(run_id, key, float(value))
                client.set_tag(run_id, SEEDS, ",".join(str(s) for s in row.seeds))
                self._tag_children(client, run_id, row)
            except Exception as err:  # noqa: BLE001 - the results are in the study; the summary still follows
                self._refused(row.trial, "could not be written", err)
        self.finish("FINISHED")

    def _refused(self, trial, what, err):
        self.broken.add(trial.number)
        reason = (secrets.mask_url(str(err)).strip().splitlines() or [""])[0]
        log.warning(f"confirmation of #{trial.number}: its MLflow run {what} ({type(err).__name__}: {reason}); its "
                    f"retrainings are recorded in the study all the same, and the sweep goes on")

    def _tag_children(self, client, run_id, row):
        for child in mlflow_store.children(client, run_id):
            seed = row.runs.get(child.data.tags.get(TRIAL_NUMBER))
            if seed is not None:
                client.set_tag(child.info.run_id, CONFIRM_OF, str(row.trial.number))
                client.set_tag(child.info.run_id, SEED, str(seed))

    def finish(self, status):
        if not self.enabled:
            return
        for number, run_id in self.ids.items():
            ended = "FAILED" if status == "FINISHED" and number in self.broken else status
            try:
                self.tracking.client.set_terminated(run_id, status=ended)
            except Exception as err:  # noqa: BLE001 - never hide the error that ended the sweep
                log.warning(f"could not mark the confirmation run {run_id} {ended}: {err}")
