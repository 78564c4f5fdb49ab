"""Helpers for the fault tests: synthetic CIFAR-10 files, train.py subprocesses, real servers."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = str(REPO / "conf")


def write_cifar(root, per_file=24, test=40, seed=0):
    """Synthetic CIFAR-10 (tests/conftest.py's), small: 5 x 24 training and 40 test images."""
    from tests.conftest import write_cifar as write
    return write(root, per_file=per_file, test=test, seed=seed)


def data_overrides(root, per_file=24, test=40):
    return [f"data.root={root}", f"data.train_images={5 * per_file}", f"data.test_images={test}",
            "data.val_size=40", "trainer.device=cpu", "trainer.log_every=0", "mlflow.log_model=false"]


# model=tiny at an eighth of its width: a CPU epoch on 80 images takes well under a second.
MICRO_MODEL = ["model=tiny", "stem.channels=8", "model.layers.layer1.channels=8", "model.layers.layer2.channels=16",
               "model.layers.layer3.channels=32", "augmentation=none"]


def tiny_overrides(root, store_uri, epochs=2):
    return data_overrides(root) + MICRO_MODEL + [f"trainer.epochs={epochs}", "trainer.batch_size=40",
                                                 f"mlflow.tracking_uri={store_uri}"]


def train_env():
    # One thread: on a busy 2-core machine, torch's thread pool makes a tiny model 10x slower.
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    for key in ("MLFLOW_TRACKING_URI", "CIFAR10_ROOT"):
        env.pop(key, None)
    return env


def run_train(overrides, cwd, timeout=120, extra=()):
    """train.py in a subprocess; returns the CompletedProcess (stdout, stderr as text)."""
    return subprocess.run([sys.executable, str(REPO / "train.py"), *extra, *overrides], cwd=cwd,
                          env=train_env(), capture_output=True, text=True, timeout=timeout)


def fastest_of_three(call, *args):
    """The shortest of three timed calls, in seconds: a speed check on a shared machine (with a second test worker
    beside it, one sample of a ~0.2 s call once took 0.73 s) must not be decided by one pause."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        call(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, timeout, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


_EMPTY_STORE = {}


def fresh_sqlite_store(folder, name="mlflow.db"):
    """An MLflow sqlite store `folder/name`, copied from one made once per session: MLflow's schema migrations
    take seconds per new database (a 2-trial sweep of model=tiny: 12 s with a copied store, 26 s creating its
    own, on a loaded 2-core machine). Tests whose subject is creating a store create their own."""
    import shutil
    import tempfile
    if "path" not in _EMPTY_STORE:
        import mlflow
        template = Path(tempfile.mkdtemp(prefix="mlflow-template-")) / "mlflow.db"
        mlflow.MlflowClient(f"sqlite:///{template}").search_experiments()
        _EMPTY_STORE["path"] = template
    Path(folder).mkdir(parents=True, exist_ok=True)
    target = Path(folder) / name
    shutil.copy(_EMPTY_STORE["path"], target)
    return f"sqlite:///{target}"


def start_mlflow_server(folder, port):
    """`mlflow server` on 127.0.0.1 with a sqlite backend and served artifacts, in its own process group."""
    import shutil
    store = fresh_sqlite_store(folder)
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no background job workers
    mlflow_cli = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    log = open(Path(folder) / "server.log", "w")
    return subprocess.Popen(
        [mlflow_cli, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", store, "--artifacts-destination", str(Path(folder) / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def run_together(script, args_of, workers, timeout=120):
    """`workers` processes of `python -c script *args_of(i)`, started at once (the script meets the others at a
    barrier of its own). Waits until all have ended, one has died (the others would wait at the barrier for
    ever) or `timeout` has passed; one still alive then prints its stack (a script that registers faulthandler
    on SIGUSR1) and is killed. Returns (return codes, outputs)."""
    import signal
    procs = [subprocess.Popen([sys.executable, "-c", script, *map(str, args_of(i))], cwd=REPO, env=train_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(workers)]
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if any(p.returncode for p in procs):
            break
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGUSR1)
            time.sleep(1)
            p.kill()
    outputs = [p.communicate()[0] for p in procs]
    return [p.returncode for p in procs], outputs


def stop_process_group(process):
    import signal
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def rest(base_url, endpoint, body=None):
    """Call MLflow's REST API (GET with query params, or POST a JSON body) and return the JSON answer."""
    import json
    import urllib.parse
    import urllib.request
    url = f"{base_url}/api/2.0/mlflow/{endpoint}"
    if body is None:
        request = urllib.request.Request(url)
    else:
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read() or b"{}")


def sweep_args(data, tracking_uri, storage_url, study, n_trials, sweep_dir, epochs=2, extra=()):
    """`train.py -m` arguments for a tiny grid sweep over the learning rate (2 values per n_trials)."""
    lrs = ",".join(str(0.001 * (i + 1)) for i in range(max(2, n_trials)))
    return ["-m", "hydra/sweeper=optuna", "hydra/sweeper/sampler=grid", "hydra/sweeper/search=empty",
            "hydra/sweeper/pruner=none", f"optimizer.lr=choice({lrs})", f"hydra.sweeper.n_trials={n_trials}",
            f"hydra.sweeper.storage={storage_url}", f"hydra.sweeper.study_name={study}",
            f"hydra.sweep.dir={sweep_dir}", *tiny_overrides(data, tracking_uri, epochs=epochs), *extra]


def postgres_bin():
    """The folder with initdb and pg_ctl (Debian keeps them off PATH), or None."""
    import glob
    import shutil
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1 in a temp folder (run as `postgres` when we are root).

    The superuser connects over the cluster's own socket folder without a password; TCP connections
    (what the sweeps use) need a password (scram-sha-256), as on a real database host.
    """

    def __init__(self, port):
        import pwd
        import tempfile
        # Its own folder straight under /tmp: pytest's tmp_path is private to root, so `postgres` can't enter it.
        self.bin, self.folder, self.port = postgres_bin(), Path(tempfile.mkdtemp(prefix="pg-")), port
        self.data = self.folder / "data"
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:  # initdb refuses to run as root
            os.chown(self.folder, pwd.getpwnam("postgres").pw_uid, pwd.getpwnam("postgres").pw_gid)

    def _run(self, *command):
        command = [str(c) for c in command]
        if os.geteuid() == 0:
            import shlex
            command = ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(command)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{command} failed with {done.returncode}: {done.stderr[-2000:]}")

    def start(self):
        self._run(self.bin / "initdb", "-D", self.data, "-U", self.user, "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8")
        self._run(self.bin / "pg_ctl", "-D", self.data, "-l", self.folder / "server.log", "-w", "-t", "120",
                  "-o", f"-h 127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off", "start")
        return self

    def sql(self, statement):
        self._run(self.bin / "psql", "-h", self.folder, "-p", self.port, "-U", self.user, "-d", "postgres",
                  "-v", "ON_ERROR_STOP=1", "-c", statement)

    def create_role(self, name, password):
        self.sql(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")

    def create_database(self, name, owner):
        self._run(self.bin / "createdb", "-h", self.folder, "-p", self.port, "-U", self.user, "-O", owner, name)

    def url(self, database, user, password):
        """As the README writes them: SQLAlchemy 2.1 takes postgresql:// to the psycopg (3) driver."""
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def stop(self):
        import shutil
        self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)
