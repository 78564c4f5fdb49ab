import json
import subprocess
import sys

import mlflow
import mlflow.pytorch
import optuna
import torch
import pytest

from errors import UserError
from training import app
from training.gate import check_config
from training.tracking import read_records
from models import param_report
from tests.conftest import REPO, compose_cfg
from tests.faultkit import fresh_sqlite_store


def run_train(args, env, cwd):
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_dry_run_prints_table_and_exact_last_line(tmp_path, train_env):
    train_env["CIFAR10_ROOT"] = str(tmp_path / "no-data-here")  # proves no data is loaded
    result = run_train(["model=final", "dry_run=true"], train_env, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "params=4997194 budget=5000000 feasible=true"
    assert any(line.startswith("layer3 (26 blocks)") for line in lines)


def test_help_shows_the_projects_usage_then_its_groups(tmp_path, train_env):
    result = run_train(["--help"], train_env, tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("resnet-sweep: ") and "python train.py -m experiment=demo" in text
    assert "experiment: demo" in text and "hydra/sweeper/search: " in text and "budget:\n  max_params: 5000000" in text


def test_the_demo_sweep_gates_prunes_and_nests_its_trials(tmp_path, train_env):
    """`make demo` (python train.py -m experiment=demo), on the synthetic data and with fewer trials."""
    fresh_sqlite_store(tmp_path)  # the store it names, ready made
    result = run_train(["-m", "experiment=demo", "hydra.sweeper.n_trials=4", "data.train_images=500",
                        "data.test_images=200", "data.val_size=100", "trainer.device=cpu", "trainer.log_every=0",
                        f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"], train_env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Browse it: mlflow ui --backend-store-uri sqlite:///" in result.stdout
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert len([t for t in study.trials if t.user_attrs.get("launched")]) == 4
    assert any(t.user_attrs.get("infeasible") for t in study.trials)  # some proposals over the 200k budget
    runs = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_runs(["1"])
    assert len([r for r in runs if r.data.tags.get("mlflow.parentRunId")]) == 4


def test_over_budget_fails_before_data_and_leaves_no_run(tmp_path, train_env):
    train_env["CIFAR10_ROOT"] = str(tmp_path / "no-data-here")
    store = tmp_path / "store"
    result = run_train(["model=resnet18", f"mlflow.tracking_uri=sqlite:///{store}.db"], train_env, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: model has 11,172,170 parameters")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "store.db").exists()   # no MLflow store touched, so no run in it


def test_training_lowers_loss_and_logs_a_complete_run(tiny_run):
    """The shared run (tests/conftest.py: model=tiny, 3 epochs, trained in this process by app.run)."""
    cfg, val_acc = tiny_run.cfg, tiny_run.val_acc
    assert 0.0 <= val_acc <= 1.0
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[cfg.mlflow.experiment], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.layers.layer3.blocks"] == "2" and run.data.params["num_params"] == "135370"
    client = mlflow.MlflowClient()
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step)]
    assert len(losses) == 3 and losses[-1] < losses[0]
    for key in ("val_acc", "val_loss", "lr", "images_per_sec", "epoch_time"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 3
    assert run.data.metrics["test_acc"] > 0.3            # learnable synthetic data, chance is 0.1
    assert run.data.metrics["final_val_acc"] == pytest.approx(val_acc)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"resolved_config.yaml", "param_table.txt", "training_curves.png", "metrics.jsonl"} <= artifacts
    # The network as an MLflow model: the run's model_uri tag loads it, normalised images in, logits out.
    model = mlflow.pytorch.load_model(run.data.tags["model_uri"])
    assert type(model).__name__ == "ResNet" and model(torch.randn(5, 3, 32, 32)).shape == (5, 10)
    metadata = mlflow.models.get_model_info(run.data.tags["model_uri"]).metadata
    assert metadata["dataset"] == "cifar10" and len(metadata["normalize_mean"]) == len(metadata["normalize_std"]) == 3
    # The exact images of each split, as MLflow dataset inputs.
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "test"}
    assert {d.name for d in inputs.values()} == {"cifar10-train", "cifar10-val", "cifar10-test"}
    sizes = {context: json.loads(d.profile)["features_shape"][0] for context, d in inputs.items()}
    assert sizes == {"training": 400, "validation": 100, "test": 200}
    assert len({d.digest for d in inputs.values()}) == 3
    # System metrics (single runs: on by default), sampled in the background while the run was open.
    assert any(key.startswith("system/cpu_utilization") for key in run.data.metrics), sorted(run.data.metrics)
    assert float(run.data.params["train_gflops"]) == pytest.approx(param_report(cfg).train_gflops, abs=1e-4)
    # The same numbers as JSON lines beside the run, for scripts (no parsing of printed lines).
    records = read_records(client.download_artifacts(run.info.run_id, "metrics.jsonl"))
    assert [r["kind"] for r in records] == ["epoch"] * 3 + ["final"]
    assert [r["train_loss"] for r in records[:3]] == pytest.approx(losses)
    assert records[-1]["test_acc"] == pytest.approx(run.data.metrics["test_acc"])


@pytest.mark.parametrize("override, message", [
    ("trainer.batch_size=0", "trainer.batch_size=0: must be an integer >= 1"),
    ("trainer.precision=fp8", "trainer.precision=fp8: use one of fp32, bf16, fp16"),
    ("optimizer.name=lamb", "optimizer.name=lamb: use one of"),
    ("scheduler.name=warm", "scheduler.name=warm: use one of"),
    ("augmentation.name=mixup", "augmentation.name=mixup: use one of"),
])
def test_bad_trainer_settings_fail_before_anything(override, message):
    with pytest.raises(UserError, match=message):
        check_config(compose_cfg(["model=tiny", override]))


@pytest.mark.parametrize("setting, device_type, fused", [("auto", "cpu", True), ("auto", "cuda", True),
                                                         ("auto", "mps", False), (False, "cpu", False)])
def test_fused_optimizer_kernels_follow_the_setting(setting, device_type, fused):
    from training.optim import build_optimizer, fused_kernels
    for name in ("adamw", "sgd"):
        cfg = compose_cfg([f"optimizer={name}", f"trainer.fused_optimizer={str(setting).lower()}"])
        assert fused_kernels(cfg, device_type) is fused
        if device_type == "cpu":  # the CPU kernels exist: the optimizer really is built fused
            optimizer = build_optimizer(cfg, torch.nn.Linear(3, 2), device_type)
            assert bool(optimizer.defaults["fused"]) is fused


def test_sqlite_stores_in_folders_not_yet_there(tmp_path):
    """MLflow's and Optuna's sqlite files may be named inside folders that do not exist yet."""
    from sweeper.stores import open_storage
    from training.tracking import open_store
    assert open_store(f"sqlite:///{tmp_path}/new/mlflow/mlflow.db", "e")
    assert (tmp_path / "new" / "mlflow" / "mlflow.db").is_file()
    open_storage(f"sqlite:///{tmp_path}/new/optuna/optuna.db")
    assert (tmp_path / "new" / "optuna" / "optuna.db").is_file()


@pytest.mark.parametrize("scale, batch, peak", [(False, 512, 0.01), (True, 512, 0.02), (True, 128, 0.005)])
def test_onecycle_peaks_at_the_optimizers_scaled_lr(scale, batch, peak):
    from training.optim import build_optimizer, build_scheduler
    cfg = compose_cfg(["scheduler=onecycle", "optimizer=sgd", "optimizer.lr=0.01", f"optimizer.scale_lr_with_batch={str(scale).lower()}",
                       f"trainer.batch_size={batch}"])
    optimizer = build_optimizer(cfg, torch.nn.Linear(3, 2), "cpu")
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch=10, epochs=4)
    lrs = []
    for _ in range(40):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert max(lrs) == pytest.approx(peak, rel=0.02)
    explicit = compose_cfg(["scheduler=onecycle", "scheduler.max_lr=0.3", f"trainer.batch_size={batch}"])
    opt = build_optimizer(explicit, torch.nn.Linear(3, 2), "cpu")
    assert build_scheduler(explicit, opt, 10, 4).get_last_lr()[0] == pytest.approx(0.3 / 25)



def test_sigterm_ends_a_single_run_as_ctrl_c_does_with_the_shells_code_for_it(monkeypatch, capsys):
    """A scheduler that SIGTERMs a single run reads 143 (128 + 15), as from a sweep; the line says how to go on."""
    from sweeper.signals import Terminated

    def terminated(cfg):
        raise Terminated("signal 15")
    monkeypatch.setattr(app, "run", terminated)
    monkeypatch.setattr(app, "in_multirun", lambda: False)
    with pytest.raises(SystemExit) as caught:
        app.main(None)
    assert caught.value.code == 143
    assert capsys.readouterr().err == ("terminated (SIGTERM): the MLflow run is KILLED; the checkpoint of the last "
                                       "finished epoch is kept: run the same command with trainer.resume=true to go on\n")

@pytest.mark.parametrize("multirun", [False, True])
def test_ctrl_c_is_one_line_and_exit_130_unless_a_sweep_handles_it(monkeypatch, capsys, multirun):
    def interrupted(cfg):
        raise KeyboardInterrupt
    monkeypatch.setattr(app, "run", interrupted)
    monkeypatch.setattr(app, "in_multirun", lambda: multirun)
    if multirun:  # the sweeper records its trials as interrupted and says so itself
        with pytest.raises(KeyboardInterrupt):
            app.main(None)
        return
    with pytest.raises(SystemExit) as caught:
        app.main(None)
    assert caught.value.code == 130
    assert capsys.readouterr().err == ("interrupted: the MLflow run is KILLED; the checkpoint of the last finished epoch "
                                       "is kept: run the same command with trainer.resume=true to go on\n")
