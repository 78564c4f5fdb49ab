"""One MLflow store as every process of a sweep opens it: the sweep's parent run (sweeper/tracking.py) and
each job's tracker (training/tracking.py) go through these functions, so a store is opened, an experiment
got or created, and a run looked up or ended the same way everywhere.

Several processes may open one store at the same moment (workers of one sweep, jobs of one batch):
- a fresh sqlite file is created under `<db>.lock` (sweeper/stores.py: first_open), one process at a time;
- an experiment that two create at once exists once: the loser's create fails on the store's unique name,
  and it reads the winner's;
- a fresh server database (PostgreSQL) whose tables another process is creating at that moment: the open
  waits for them (sweeper/stores.py: while_schema_is_made) instead of failing the job.
On PostgreSQL, psycopg sends a batch of inserts (SQLAlchemy's executemany) as one pipeline. When one of them
breaks a unique key because another worker inserted the same row a moment before (a dataset, a metric's latest
value), psycopg raises that error, which MLflow (or Tracker.log_datasets) handles by writing the row again,
and also logs a WARNING "error ignored terminating <psycopg.Pipeline ...>: pipeline aborted": the same conflict,
echoed by the pipeline's clean-up. Those echoes say nothing a user can act on; `quiet_pipeline_echo` drops them
(and only them) in every process that opens a store here.
mlflow is imported lazily: the dry run and the config checks never pay for it.
"""
import logging
import socket
import urllib.parse

from errors import TrackingError
from sweeper.records import PARENT_RUN
from sweeper.secrets import mask_url, reveal
from sweeper.stores import first_open, make_sqlite_folder, while_schema_is_made


def check_reachable(uri, timeout=3.0):
    """Fail in seconds, not after MLflow's minutes of retries, when a tracking server is not there."""
    parsed = urllib.parse.urlparse(reveal(uri))
    shown = mask_url(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as err:
        raise TrackingError(f"MLflow tracking server {shown} cannot be reached ({err}). Start it "
                            f"(mlflow server --host {parsed.hostname} --port {port}) or set "
                            f"mlflow.tracking_uri to a reachable server or a local store "
                            f"(sqlite:///mlflow.db)") from err


class _PipelineEcho(logging.Filter):
    """Drops psycopg's "error ignored ...: pipeline aborted" lines (see the module's docstring)."""

    def filter(self, record):
        message = record.getMessage()
        return not (message.startswith("error ignored") and message.rstrip().endswith("pipeline aborted"))


def quiet_pipeline_echo():
    """Install the filter on psycopg's logger once per process."""
    logger = logging.getLogger("psycopg")
    if not any(isinstance(f, _PipelineEcho) for f in logger.filters):
        logger.addFilter(_PipelineEcho())


def client(uri):
    """An MlflowClient on `uri` (a masked sweep URL is revealed here)."""
    from mlflow import MlflowClient
    return MlflowClient(reveal(uri))


def open_experiment(uri, experiment):
    """(MlflowClient, experiment id) for `experiment` in the store at `uri`, created if it is new (the store
    too, its folder included). Safe when several processes do it at once (see the module's docstring)."""
    real = reveal(uri)
    make_sqlite_folder(real)
    quiet_pipeline_echo()

    def attempt():
        with first_open(real):  # MlflowClient makes (or migrates) the database's tables as it starts
            store = client(real)
            return store, _get_or_create(store, experiment)
    return while_schema_is_made(attempt)


def _get_or_create(store, experiment):
    from mlflow.exceptions import MlflowException
    found = store.get_experiment_by_name(experiment)
    if found:
        return found.experiment_id
    try:
        return store.create_experiment(experiment)
    except MlflowException as err:
        if "already exists" not in str(err):
            raise
    return store.get_experiment_by_name(experiment).experiment_id  # another process created it a moment ago


def get_run(store, run_id):
    """The run, or None when the store has no such run (deleted runs included: they are returned)."""
    from mlflow.exceptions import MlflowException
    try:
        return store.get_run(run_id)
    except MlflowException:
        return None


def is_active(store, run_id):
    """True when the run is in the store and not deleted."""
    run = get_run(store, run_id) if run_id else None
    return run is not None and run.info.lifecycle_stage == "active"


def children(store, parent, running_only=False):
    """The runs nested under `parent` (tag mlflow.parentRunId), in its experiment; RUNNING ones only if asked."""
    experiment_id = store.get_run(parent).info.experiment_id
    query = f"tags.{PARENT_RUN} = '{parent}'" + (" and attributes.status = 'RUNNING'" if running_only else "")
    return store.search_runs([experiment_id], query, max_results=10_000)


def end_run(store, run_id, status, tags=None):
    """End a run that its own process can no longer end (killed), with tags saying why. Tags first: a run
    seen ended always carries its reason."""
    for key, value in (tags or {}).items():
        store.set_tag(run_id, key, str(value)[:5000])
    store.set_terminated(run_id, status=status)
