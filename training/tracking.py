"""MLflow: one place that opens the store, starts runs and logs what a run produced."""
import os
import socket
import urllib.parse

from omegaconf import OmegaConf

from errors import TrackingError


def flatten(cfg, prefix=""):
    """Resolved config -> {"model.layers.layer1.blocks": 3, ...} (MLflow params are flat strings)."""
    items = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            items.update(flatten(value, f"{name}."))
        else:
            items[name] = value if not isinstance(value, (list, tuple)) else str(list(value))
    return items


def check_reachable(uri, timeout=3.0):
    """Fail in seconds, not after MLflow's minutes of retries, when a server is not there."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as err:
        raise TrackingError(f"MLflow tracking server {uri} cannot be reached ({err}). Start it "
                            f"(mlflow server --host {parsed.hostname} --port {port}) or set "
                            f"mlflow.tracking_uri to a reachable server or a local store "
                            f"(sqlite:///mlflow.db)") from err


def make_sqlite_folder(url):
    """sqlite cannot create a database file in a folder that is not there; make the folder."""
    if not url.startswith("sqlite:///"):
        return
    path = url[len("sqlite:///"):].split("?", 1)[0]
    if path and path != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def open_store(uri, experiment):
    """Point MLflow at `uri`, create its database once if it is new, and return the experiment id.

    Creating a sqlite store from several processes at once fails, so sweeps call this first.
    """
    check_reachable(uri)
    make_sqlite_folder(uri)
    import mlflow
    mlflow.set_tracking_uri(uri)
    try:
        found = mlflow.get_experiment_by_name(experiment)
        return found.experiment_id if found else mlflow.create_experiment(experiment)
    except Exception as err:
        if "already exists" in str(err):  # another worker created it a moment ago
            return mlflow.get_experiment_by_name(experiment).experiment_id
        raise TrackingError(f"cannot open MLflow store {uri}: {err}") from err


def start_run(cfg, num_params, experiment_id, run_id=None):
    """Start (or resume, with run_id) the run for one training job; nested under a sweep's parent."""
    import mlflow
    tags = {"model": str(cfg.model.name), "num_params": str(num_params)}
    parent = cfg.get("sweep", {}).get("parent_run_id") if cfg.get("sweep") else None
    if parent:
        tags["mlflow.parentRunId"] = str(parent)
        tags["trial_number"] = str(cfg.sweep.trial_number)
    run = mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=run_name(cfg), tags=tags)
    if run_id is None:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        params = flatten({k: v for k, v in resolved.items() if k not in ("hydra", "sweep")})
        params["num_params"] = num_params
        for chunk in _chunks(list(params.items()), 100):
            mlflow.log_params(dict(chunk))
    return run


def run_name(cfg):
    if cfg.mlflow.get("run_name"):
        return str(cfg.mlflow.run_name)
    name = f"{cfg.model.name}-{cfg.optimizer.name}-{cfg.scheduler.name}"
    if cfg.get("sweep") and cfg.sweep.get("trial_number") is not None:
        name = f"trial-{cfg.sweep.trial_number}-{name}"
    return name


def _chunks(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]
