"""MLflow: one place that opens the store, starts runs and logs what a run produced."""
import os
import socket
import urllib.parse

from omegaconf import OmegaConf

from errors import TrackingError
from sweeper.secrets import mask_url, reveal
from sweeper.stores import first_open, make_sqlite_folder


def flatten(cfg, prefix=""):
    """Resolved config -> {"model.layers.layer1.blocks": 3, ...} (MLflow params are flat strings)."""
    items = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            items.update(flatten(value, f"{name}."))
        else:
            items[name] = mask_url(value if not isinstance(value, (list, tuple)) else str(list(value)))
    return items


def masked_config(cfg):
    """The resolved config as a plain container, every URL's password masked (for artifacts and params)."""
    return mask_secrets(OmegaConf.to_container(cfg, resolve=True))


def mask_secrets(value):
    if isinstance(value, dict):
        return {k: mask_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return mask_url(value)


def check_reachable(uri, timeout=3.0):
    """Fail in seconds, not after MLflow's minutes of retries, when a server is not there."""
    parsed = urllib.parse.urlparse(reveal(uri))
    uri = mask_url(uri)
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


def open_store(uri, experiment):
    """Point MLflow at `uri` (a sweep's masked URL is revealed here), create its database if it is new,
    and return the experiment id. Several processes may open one fresh sqlite store at once: the first
    open holds `<db>.lock` (sweeper/stores.py), so only one of them creates the tables."""
    check_reachable(uri)
    real = reveal(uri)
    make_sqlite_folder(real)
    import mlflow
    mlflow.set_tracking_uri(real)
    try:
        with first_open(real):
            found = mlflow.get_experiment_by_name(experiment)
            return found.experiment_id if found else mlflow.create_experiment(experiment)
    except Exception as err:
        if "already exists" in str(err):  # another worker created it a moment ago
            return mlflow.get_experiment_by_name(experiment).experiment_id
        raise TrackingError(f"cannot open MLflow store {mask_url(uri)}: {mask_url(str(err))}") from err


def start_run(cfg, num_params, experiment_id, run_id=None, trial=None):
    """Start (or resume, with run_id) the run for one training job; a sweep trial (sweeper.job.current_trial())
    is nested under its sweep's parent run. CUDA_VISIBLE_DEVICES, when set, is recorded as a tag."""
    import mlflow
    tags = {"model": str(cfg.model.name), "num_params": str(num_params)}
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        tags["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    if trial is not None:
        tags["trial_number"] = str(trial.number)
        if trial.parent_run_id:
            tags["mlflow.parentRunId"] = trial.parent_run_id
    run = mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=run_name(cfg, trial), tags=tags)
    if run_id is None:
        params = flatten({k: v for k, v in masked_config(cfg).items() if k != "hydra"})
        params["num_params"] = num_params
        for chunk in _chunks(list(params.items()), 100):
            mlflow.log_params(dict(chunk))
    return run


def run_name(cfg, trial=None):
    if cfg.mlflow.get("run_name"):
        return str(cfg.mlflow.run_name)
    name = f"{cfg.model.name}-{cfg.optimizer.name}-{cfg.scheduler.name}"
    return f"trial-{trial.number}-{name}" if trial is not None else name


def _chunks(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]
