"""The one tracker: every MLflow call a training job makes goes through this module.

`Tracker` opens the store, starts (or resumes) the run of one job, logs its params, per-epoch
metrics, final metrics, tags and artifacts, and ends it. Beside the MLflow run it appends each
epoch and the final result as JSON lines (`metrics.jsonl` in the job's output folder), so scripts
read a run's numbers from a file instead of parsing printed lines. mlflow is imported lazily: the
dry run and the config checks never pay for it.
"""
import json
import os
import time
import warnings

from omegaconf import OmegaConf

from errors import TrackingError
from sweeper import mlflow_store
from sweeper.mlflow_store import check_reachable  # noqa: F401 - importable from here as before
from sweeper.records import ERROR, MODEL_URI, PARENT_RUN, TRIAL_NUMBER
from sweeper.secrets import mask_url, reveal
from sweeper.stores import anchored

RECORDS_FILE = "metrics.jsonl"


# MLflow's own lines (INFO: "Creating initial MLflow database tables", "Started monitoring system metrics", ...)
# say nothing a user can act on and push the run's lines out of view: its loggers start at WARNING unless
# MLFLOW_LOGGING_LEVEL says otherwise (read when mlflow is imported; train.py runs this module's import first).
# hydra.verbose=true brings them back (loud_libraries).
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
LIBRARY_LOGGERS = ("mlflow", "alembic", "optuna")


def loud_libraries():
    """hydra.verbose=true: the libraries' INFO lines again."""
    import logging
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    os.environ["MLFLOW_LOGGING_LEVEL"] = "INFO"


class quiet_pickle_warning:
    """MLflow warns at every pickled model that unpickling can run code: the project stores its models pickled on
    purpose (mlflow.model_format=pickle; pt2 is the alternative, docs/results.md), so the warning is off for that
    call, unless hydra.verbose asked for the libraries' lines."""

    def __init__(self, serialization):
        import logging
        self.logger = logging.getLogger("mlflow.pytorch")
        self.active = serialization == "pickle" and self.logger.getEffectiveLevel() > logging.INFO

    def __enter__(self):
        import logging
        if self.active:
            self.level = self.logger.level
            self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        if self.active:
            self.logger.setLevel(self.level)


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
    return _masked(OmegaConf.to_container(cfg, resolve=True))


def _masked(value):
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return mask_url(value)


def open_store(uri, experiment):
    """Point MLflow at `uri` (a sweep's masked URL is revealed here), create its database if it is new,
    and return the experiment id. Several processes may open one fresh store at once: sweeper/mlflow_store.py
    (the one way every process of the project opens a store) makes that safe."""
    check_reachable(uri)
    import mlflow
    try:
        _, experiment_id = mlflow_store.open_experiment(uri, experiment)
    except Exception as err:
        raise TrackingError(f"cannot open MLflow store {mask_url(uri)}: {mask_url(str(err))}") from err
    mlflow.set_tracking_uri(reveal(uri))
    return experiment_id


def run_metrics(uri, run_id):
    """The final metrics of a finished run in `uri` (KeyError-free: raises TrackingError)."""
    try:
        return dict(mlflow_store.client(uri).get_run(run_id).data.metrics)
    except Exception as err:
        raise TrackingError(f"no MLflow run '{run_id}' in {mask_url(uri)} ({type(err).__name__})") from None


class Tracker:
    """The MLflow side of one job: open, start or resume its run, log, end. One per job."""

    def __init__(self, cfg, out_dir=None):
        self.cfg = cfg
        self.uri = anchored(str(cfg.mlflow.tracking_uri))  # the launch folder's store, with hydra.job.chdir too
        self.experiment = str(cfg.mlflow.experiment)
        self.records = os.path.join(out_dir, RECORDS_FILE) if out_dir else None
        self.run_id = None
        self.experiment_id = None

    # --- the store ---------------------------------------------------------------------------------
    def check_reachable(self):
        check_reachable(self.uri)

    def open(self):
        self.experiment_id = open_store(self.uri, self.experiment)
        return self.experiment_id

    def has_run(self, run_id):
        try:
            return mlflow_store.get_run(mlflow_store.client(self.uri), run_id) is not None
        except Exception:  # noqa: BLE001 - any answer but a run means "not in this store"
            return False

    # --- the run -----------------------------------------------------------------------------------
    def start(self, report, run_id=None, run_name=None, tags=None, parent_run_id=None, trial_number=None,
              system_metrics=False):
        """Start the job's run (or reopen run_id); nested under a sweep's parent run when there is one.
        `report` is the gate's count (models.ParamReport): its parameters and training FLOPs are logged.
        system_metrics: sample CPU/GPU utilisation and memory in the background while the run is open.
        CUDA_VISIBLE_DEVICES, when set (a sweep's device pool sets it per trial), is the tag cuda_visible_devices."""
        import mlflow
        all_tags = {"model": str(self.cfg.model.name), "num_params": str(report.total), **(tags or {})}
        if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
            all_tags["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
        if parent_run_id:
            all_tags[PARENT_RUN] = str(parent_run_id)
            all_tags[TRIAL_NUMBER] = str(trial_number)
        run = mlflow.start_run(run_id=run_id, experiment_id=self.experiment_id,
                               run_name=run_name or self.default_run_name(trial_number), tags=all_tags,
                               log_system_metrics=bool(system_metrics))
        self.run_id = run.info.run_id
        if run_id is None:
            params = flatten({k: v for k, v in masked_config(self.cfg).items() if k != "hydra"})
            params["num_params"] = report.total
            params["train_gflops"] = round(report.train_gflops, 4)
            items = list(params.items())
            try:
                for start in range(0, len(items), 100):
                    mlflow.log_params(dict(items[start:start + 100]))
            except BaseException as error:  # the caller gets no run to close: close it here, FAILED
                self.end("FAILED", error=error)
                raise
        return self.run_id

    def default_run_name(self, trial_number=None):
        if self.cfg.mlflow.get("run_name"):
            return str(self.cfg.mlflow.run_name)
        name = f"{self.cfg.model.name}-{self.cfg.optimizer.name}-{self.cfg.scheduler.name}"
        return f"trial-{trial_number}-{name}" if trial_number is not None else name

    def resume(self, history, epoch):
        """After reopening a run: log the epochs a checkpoint has but MLflow lacks (killed between saving
        and logging), so the run ends with each epoch logged exactly once; clear an interrupted attempt's error."""
        import mlflow
        client = mlflow.MlflowClient()
        logged = {m.step for m in client.get_metric_history(self.run_id, "train_loss")}
        for row in history:
            if row["epoch"] not in logged:
                mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
        if ERROR in client.get_run(self.run_id).data.tags:
            client.delete_tag(self.run_id, ERROR)
        mlflow.set_tag("resumed_from_epoch", str(epoch))

    def log_epoch(self, row):
        """One epoch's metrics, at step = epoch, in MLflow and as a JSON line."""
        import mlflow
        mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
        self._record({"kind": "epoch", **row})

    def log_metrics(self, metrics, step=None):
        import mlflow
        mlflow.log_metrics(metrics, step=step)

    def log_final(self, metrics):
        """The run's result (test accuracy, times), in MLflow and as the last JSON line."""
        self.log_metrics(metrics)
        self._record({"kind": "final", **metrics})

    def log_curve(self, rows, keys, prefix):
        """Many step-indexed values at once (a whole curve), in batches of 1,000."""
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient
        now = int(time.time() * 1000)
        metrics = [Metric(f"{prefix}/{key}", float(row[key]), now, row["step"]) for row in rows for key in keys]
        client = MlflowClient()
        for start in range(0, len(metrics), 1000):
            client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def log_datasets(self, splits, dataset_name, source):
        """Each split as an MLflow dataset input of this run: name `<dataset>-<split>`, the digest of its exact
        images (data.build.Split), its sizes in the profile, context training / validation / test."""
        import mlflow
        import mlflow.data
        for split in splits:
            with warnings.catch_warnings():
                # MLflow 3.17 registers its local-path source twice and warns that a path "can be interpreted
                # in multiple ways: LocalArtifactDatasetSource, LocalArtifactDatasetSource" (it is one way).
                warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
                dataset = mlflow.data.from_numpy(split.images.numpy(), targets=split.labels.numpy(),
                                                 source=str(source), name=f"{dataset_name}-{split.name}",
                                                 digest=split.digest)
            try:
                mlflow.log_input(dataset, context=split.context)
            except mlflow.exceptions.MlflowException as err:
                # Two workers logging the same dataset at the same moment: the second insert of its row breaks the
                # unique key (seen on PostgreSQL in CI); the row is there now, so logging it again links it.
                if "dataset_pk" not in str(err) and "UNIQUE constraint" not in str(err):
                    raise
                mlflow.log_input(dataset, context=split.context)

    def log_model(self, model, image_shape, serialization="pickle", metadata=None):
        """The trained network as an MLflow PyTorch model of this run, with its signature and an input example:
        a float batch (N, *image_shape) of normalised images -> (N, num_classes) logits. Sets the run tag
        `model_uri` (models:/<id>), which mlflow.pytorch.load_model takes. Returns that URI.

        pickle (default): the project's ResNet class itself, with the models package stored beside it
        (code_paths), so it loads where this repository is absent; 0.1-0.3 s per model here. pt2:
        torch.export's graph (loading runs no pickle), 0.6 s for model=tiny and 4.8 s for model=final here.
        """
        import copy

        import mlflow.pytorch
        import numpy as np
        import torch
        from mlflow.models import infer_signature

        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        cpu = copy.deepcopy(model).float().cpu().to(memory_format=torch.contiguous_format).eval()
        example = np.random.default_rng(0).standard_normal((2, *image_shape)).astype(np.float32)
        with torch.no_grad():
            logits = cpu(torch.from_numpy(example)).numpy()
        extra = dict(code_paths=[os.path.join(here, "models"), os.path.join(here, "errors.py")]) \
            if serialization == "pickle" else {}
        with quiet_pickle_warning(serialization):
            info = mlflow.pytorch.log_model(cpu, name="model", signature=infer_signature(example, logits),
                                            input_example=example, serialization_format=serialization,
                                            metadata=metadata,
                                            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"], **extra)
        mlflow.set_tag(MODEL_URI, info.model_uri)
        return info.model_uri

    def set_tags(self, tags):
        import mlflow
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_artifacts(self, paths, folder=None):
        import mlflow
        for path in paths:
            mlflow.log_artifact(path, folder)

    def end(self, status="FINISHED", error=None):
        """End the run; `error` (an exception) is kept as the run's `error` tag."""
        import mlflow
        try:
            if error is not None:
                mlflow.set_tag(ERROR, f"{type(error).__name__}: {error}"[:5000])
        finally:  # the run is ended (and leaves the process's active-run stack) even when the tag cannot be written
            mlflow.end_run(status=status)
        if self.records and error is not None:
            self._record({"kind": "end", "status": status, "error": f"{type(error).__name__}: {error}"[:1000]})

    def _record(self, entry):
        if not self.records:
            return
        os.makedirs(os.path.dirname(self.records), exist_ok=True)
        with open(self.records, "a") as f:
            f.write(json.dumps({"time": time.time(), **entry}) + "\n")


def read_records(path):
    """The JSON lines a Tracker wrote: [{"kind": "epoch", "epoch": 1, ...}, ..., {"kind": "final", ...}]."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
