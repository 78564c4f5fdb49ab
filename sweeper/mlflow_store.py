"""One MLflow store as every process of a sweep opens it: the sweep's parent run (sweeper/tracking.py) and
each job's tracker (training/tracking.py) go through these functions, so a store is opened, an experiment
got or created, and a run looked up or ended the same way everywhere.

Several processes may open one store at the same moment (workers of one sweep, jobs of one batch):
- a fresh sqlite file is created under `<db>.lock` (sweeper/stores.py: first_open), one process at a time;
- an experiment that two create at once exists once: the loser's create fails on the store's unique name,
  and it reads the winner's;
- a fresh server database (PostgreSQL) whose tables another process is creating at that moment fails the
  schema check; the open is retried for OPEN_RETRY_S instead of failing the job.
mlflow is imported lazily: the dry run and the config checks never pay for it.
"""
import socket
import time
import urllib.parse

from errors import TrackingError
from sweeper.secrets import mask_url, reveal
from sweeper.stores import first_open, make_sqlite_folder

# A fresh PostgreSQL store takes MLflow's ~60 alembic migrations: 6-9 s here on a loaded 2-core machine.
# A process that opens it meanwhile fails its schema check (tables half made), then succeeds once they are.
OPEN_RETRY_S = 60.0


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


def client(uri):
    """An MlflowClient on `uri` (a masked sweep URL is revealed here)."""
    from mlflow import MlflowClient
    return MlflowClient(reveal(uri))


def open_experiment(uri, experiment):
    """(MlflowClient, experiment id) for `experiment` in the store at `uri`, created if it is new (the store
    too, its folder included). Safe when several processes do it at once (see the module's docstring)."""
    real = reveal(uri)
    make_sqlite_folder(real)
    deadline = time.monotonic() + OPEN_RETRY_S
    while True:
        try:
            with first_open(real):  # MlflowClient makes (or migrates) the database's tables as it starts
                store = client(real)
                return store, _get_or_create(store, experiment)
        except Exception as err:  # noqa: BLE001 - only the half-made schema of another process is retried
            if not _schema_in_the_making(err) or time.monotonic() > deadline:
                raise
        time.sleep(1.0)


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


def _schema_in_the_making(err):
    """True for the errors of a server database whose tables another process is creating right now."""
    text = str(err).lower()
    return (not isinstance(err, TrackingError)
            and any(sign in text for sign in ("out-of-date database schema", "duplicate key value", "already exists",
                                              "does not exist", "undefinedtable", "alembic_version")))


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
    query = f"tags.mlflow.parentRunId = '{parent}'" + (" and attributes.status = 'RUNNING'" if running_only else "")
    return store.search_runs([experiment_id], query, max_results=10_000)


def end_run(store, run_id, status, tags=None):
    """End a run that its own process can no longer end (killed), with tags saying why. Tags first: a run
    seen ended always carries its reason."""
    for key, value in (tags or {}).items():
        store.set_tag(run_id, key, str(value)[:5000])
    store.set_terminated(run_id, status=status)
