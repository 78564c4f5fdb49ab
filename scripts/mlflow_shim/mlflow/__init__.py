"""A recording stand-in for the few MLflow calls train.py makes, for machines without MLflow.

Only scripts/gpu_check.py puts this on PYTHONPATH, and only when `import mlflow` fails there (the GPU
image has no MLflow and no network). It appends every call's data as one JSON line to the file named by
GPU_CHECK_MLFLOW_LOG, so the check still records per-epoch metrics. It is not used anywhere else.
"""
import json
import os
import time
import uuid
from types import SimpleNamespace

_LOG = os.environ.get("GPU_CHECK_MLFLOW_LOG", "mlflow_shim.jsonl")
_run = None


def _write(kind, **data):
    with open(_LOG, "a") as f:
        f.write(json.dumps({"kind": kind, "time": time.time(), **data}, default=str) + "\n")


def set_tracking_uri(uri):
    _write("set_tracking_uri", uri=uri)


def get_experiment_by_name(name):
    return SimpleNamespace(experiment_id="0", name=name)


def create_experiment(name):
    return "0"


def start_run(run_id=None, experiment_id=None, run_name=None, tags=None):
    global _run
    _run = SimpleNamespace(info=SimpleNamespace(run_id=run_id or uuid.uuid4().hex))
    _write("start_run", run_id=_run.info.run_id, run_name=run_name, tags=tags)
    return _run


def log_params(params):
    _write("params", params=params)


def log_metrics(metrics, step=None):
    _write("metrics", metrics=metrics, step=step)


def set_tag(key, value):
    _write("tag", key=key, value=value)


def log_artifact(path, artifact_path=None):
    _write("artifact", path=path)


def end_run(status="FINISHED"):
    _write("end_run", status=status)
