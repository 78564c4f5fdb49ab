"""Opening the study's storage, and any embedded (sqlite) database, safely from several processes at once.

Two processes that open a fresh sqlite database at the same moment both try to create its tables
(Optuna's, or MLflow's alembic migrations) and one fails: measured here, two MLflow stores opened at
the same instant failed 3 times in 3, an Optuna one 1 in 3 (README, "Sweeps at scale"). `first_open`
holds an exclusive `fcntl` lock on `<db>.lock` beside the file while a process opens it, so creation
and schema checks happen one process at a time; later reads and writes are sqlite's own business,
with a busy timeout so that a writer waits for another instead of failing with "database is locked".
"""
import contextlib
import fcntl
import os
import time
import warnings

SQLITE_BUSY_TIMEOUT_S = 60


def sqlite_path(url):
    """The file behind a `sqlite:///path` URL; None for other URLs and in-memory databases."""
    if not isinstance(url, str) or not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):].split("?", 1)[0]
    return None if not path or path == ":memory:" else os.path.abspath(path)


def from_launch_dir(path):
    """`path` as the folder the command was started in reads it. A Hydra job with hydra.job.chdir=true runs in its
    own output folder, where a relative path names another file: the sweep's sqlite study (`sqlite:///optuna.db`)
    was a new, empty database there and every trial failed with "Record does not exist". Unchanged when absolute,
    outside Hydra, or when the job runs where it was started."""
    if os.path.isabs(path):
        return path
    from hydra.core.hydra_config import HydraConfig
    if not HydraConfig.initialized():
        return path
    launch = HydraConfig.get().runtime.cwd
    return path if os.path.realpath(launch) == os.path.realpath(os.getcwd()) else os.path.join(launch, path)


def anchored(url):
    """A `sqlite:///` or `journal:` URL whose file is a relative path, with that path made absolute from the launch
    folder (from_launch_dir); any other URL unchanged."""
    for prefix in ("sqlite:///", JOURNAL):
        if isinstance(url, str) and url.startswith(prefix):
            path, sep, query = url[len(prefix):].partition("?")
            if path and path != ":memory:" and not os.path.isabs(os.path.expanduser(path)):
                return prefix + os.path.abspath(from_launch_dir(os.path.expanduser(path))) + sep + query
    return url


def make_sqlite_folder(url):
    """sqlite cannot create a database file in a folder that is not there; make the folder."""
    path = sqlite_path(url)
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)


@contextlib.contextmanager
def first_open(url):
    """Hold `<db>.lock` (sqlite only) while the database is opened, created or migrated."""
    path = sqlite_path(url)
    if path is None:
        yield
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# A server database (PostgreSQL) has no lock file: processes that open a fresh one at the same moment each
# create its tables, and all but the first fail on PostgreSQL's unique key of type names ("duplicate key value
# violates unique constraint pg_type_typname_nsp_index"). Measured here, 4 processes opening a fresh database
# at the same instant, 3 rounds: MLflow's store, 3 of 4 failed every round; Optuna's, 0, 1 and 3 of 4. With
# this retry, none of 12 in either. The tables are made in one transaction, so a retry finds them whole. A process
# whose CREATE TABLE comes just after another's commit fails with `DuplicateTable` instead (psycopg's class name is
# in the message): seen once in a CI run of three workers on a fresh Optuna database, so it is a sign too. So is
# `DuplicateObject` (type "studydirection" already exists: Optuna's enum types are made first), seen once likewise.
SCHEMA_WAIT_S = 60.0
SCHEMA_RACE_SIGNS = ("duplicate key value violates unique constraint", "out-of-date database schema",
                     "DuplicateTable", "DuplicateObject")


def while_schema_is_made(open_once, wait=SCHEMA_WAIT_S):
    """open_once(), retried every second for up to `wait` seconds while another process creates the tables."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return open_once()
        except Exception as err:  # noqa: BLE001 - other errors, and this one after `wait`, are raised
            if not any(sign in str(err) for sign in SCHEMA_RACE_SIGNS) or time.monotonic() > deadline:
                raise
        time.sleep(1.0)


_storages = {}


JOURNAL = "journal:"


def journal_path(url):
    """The file behind `journal:<file>`; None for other URLs."""
    if not isinstance(url, str) or not url.startswith(JOURNAL):
        return None
    return os.path.abspath(os.path.expanduser(url[len(JOURNAL):]))


def loadable(url):
    """`url` as `optuna.load_study(storage=...)` takes it: for `journal:<file>`, which Optuna reads as no URL,
    the journal's JournalStorage (open_storage); any other URL unchanged (Optuna opens it, and no lock file is
    made beside a sqlite database: the preview writes nothing)."""
    return open_storage(url) if journal_path(url) is not None else url


def journal_file(storage):
    """The file of a JournalStorage that open_storage opened in this process; None for any other storage."""
    for key, opened in _storages.items():
        if opened is storage and isinstance(key, str):
            return journal_path(key)
    return None


def open_storage(url, heartbeat_interval=None, grace_period=None):
    """Optuna's RDBStorage for `url` (with heartbeats when an interval is given), one per process and URL; for
    `journal:<file>`, a JournalStorage on that file (no database, no server: workers share the file; its
    heartbeats are the sweeper's own, sweeper/study.py).

    Trials that run in this process (the basic launcher) share it instead of paying for a new engine
    and schema check each (~0.1 s a trial).
    """
    path = journal_path(url)
    if path is not None:
        if url not in _storages:
            import optuna
            from optuna.storages.journal import JournalFileBackend
            os.makedirs(os.path.dirname(path), exist_ok=True)
            # The default lock (a symlink beside the file) works on NFS, where fcntl locks may not.
            _storages[url] = optuna.storages.JournalStorage(JournalFileBackend(path))
        return _storages[url]
    key = (url, heartbeat_interval, grace_period)
    if key not in _storages:
        import optuna
        engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}} if url.startswith("sqlite") else {}
        heartbeat = {} if heartbeat_interval is None else dict(heartbeat_interval=heartbeat_interval,
                                                                grace_period=grace_period)
        with first_open(url), warnings.catch_warnings():
            # heartbeat_interval is experimental in Optuna; it is used on purpose, so its warning stays here.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            _storages[key] = while_schema_is_made(
                lambda: optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat))
    return _storages[key]
