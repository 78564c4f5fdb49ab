"""A real `mlflow server` (sqlite backend, served artifacts) on 127.0.0.1: a single run and a sweep
logged to it, checked through MLflow's REST API, and the MLflow UI in headless Chromium."""
import time
import urllib.parse

import pytest
import torch

from tests.browser import browser, page_text, wait_for_text  # noqa: F401 - browser is a fixture
from tests.conftest import compose_cfg
from tests.faultkit import REPO, rest, tiny_overrides

ARTIFACTS = REPO / "tests" / "artifacts"  # screenshots (gitignored)


@pytest.fixture
def server(mlflow_server):
    """The session's `mlflow server` (tests/conftest.py), shared with the finished sweep logged to it."""
    return mlflow_server


@pytest.fixture
def data(micro_cifar):
    return micro_cifar


def experiment_id(url, name):
    return rest(url, "experiments/get-by-name?" + urllib.parse.urlencode({"experiment_name": name}))[
        "experiment"]["experiment_id"]


def search(url, experiment, filter_string=""):
    return rest(url, "runs/search", {"experiment_ids": [experiment], "filter": filter_string,
                                     "max_results": 100}).get("runs", [])


def tags(run):
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def history(url, run_id, key):
    answer = rest(url, "metrics/get-history?" + urllib.parse.urlencode({"run_id": run_id, "metric_key": key}))
    return sorted((m["step"], m["value"]) for m in answer.get("metrics", []))


def test_a_single_run_logged_to_the_server(server, data, tmp_path, monkeypatch):
    from training import app
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        val_acc = app.run(compose_cfg(tiny_overrides(data, server, epochs=2)
                                          + ["mlflow.experiment=single", "mlflow.run_name=one-run",
                                             "mlflow.log_model=true"]))
    finally:
        torch.set_num_threads(threads)
    [run] = search(server, experiment_id(server, "single"))
    assert run["info"]["run_name"] == "one-run" and run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["model.name"] == "tiny" and params["trainer.epochs"] == "2"
    assert [step for step, _ in history(server, run["info"]["run_id"], "val_acc")] == [1, 2]
    assert history(server, run["info"]["run_id"], "val_acc")[-1][1] == pytest.approx(val_acc)
    # Artifacts went through the server (--artifacts-destination), not to a local path of the client.
    listed = rest(server, "artifacts/list?" + urllib.parse.urlencode({"run_id": run["info"]["run_id"]}))
    assert {"resolved_config.yaml", "param_table.txt", "training_curves.png", "metrics.jsonl"} <= {
        f["path"] for f in listed["files"]}
    assert run["data"]["tags"] and any(t["key"] == "model_uri" and t["value"].startswith("models:/")
                                       for t in run["data"]["tags"])


@pytest.fixture
def sweep(served_sweep, server):
    """The session's finished 2-trial sweep logged to the server (tests/conftest.py): its experiment id."""
    assert experiment_id(server, "sweeps") == served_sweep.experiment_id
    return served_sweep.experiment_id


def test_a_sweep_logs_one_parent_and_a_child_per_trial(server, sweep):
    runs = search(server, sweep)
    parents = [r for r in runs if tags(r).get("sweep") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in tags(r)]
    assert len(parents) == 1 and len(children) == 2 and len(runs) == 3
    parent = parents[0]
    assert parent["info"]["status"] == "FINISHED" and parent["info"]["run_name"] == "sweep-served"
    assert {tags(c)["mlflow.parentRunId"] for c in children} == {parent["info"]["run_id"]}
    assert sorted(tags(c)["trial_number"] for c in children) == ["0", "1"]
    for child in children:
        assert child["info"]["status"] == "FINISHED" and tags(child)["trial_state"] == "COMPLETE"
        assert [step for step, _ in history(server, child["info"]["run_id"], "val_acc")] == [1, 2]
    best = max(children, key=lambda c: history(server, c["info"]["run_id"], "val_acc")[-1][1])
    parent_metrics = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
    assert parent_metrics["trials_complete"] == 2
    assert parent_metrics["best_value"] == pytest.approx(history(server, best["info"]["run_id"], "val_acc")[-1][1])
    # The same filter the UI's search box takes:
    assert len(search(server, sweep, f"tags.mlflow.parentRunId = '{parent['info']['run_id']}'")) == 2


def test_the_mlflow_ui_shows_the_sweep_and_a_metric(server, sweep, browser):
    from selenium.webdriver.common.by import By
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    runs = search(server, sweep)
    parent = next(r for r in runs if tags(r).get("sweep") == "parent")
    child = next(r for r in runs if tags(r).get("trial_number") == "0")

    browser.get(f"{server}/#/experiments/{sweep}/runs")
    wait_for_text(browser, "sweep-served", "3 matching runs")
    name = browser.find_element(By.XPATH, "//*[normalize-space(text())='sweep-served']")
    name_cell = name.find_element(By.XPATH, "./ancestor::*[@role='gridcell'][1]")
    name_cell.find_element(By.TAG_NAME, "button").click()  # the parent's expander shows its trials
    wait_for_text(browser, *(r["info"]["run_name"] for r in runs))
    browser.save_screenshot(str(ARTIFACTS / "mlflow_ui_runs.png"))

    browser.get(f"{server}/#/experiments/{sweep}/runs/{child['info']['run_id']}")
    wait_for_text(browser, child["info"]["run_name"], "Finished", "val_acc")
    value = f"{dict((m['key'], m['value']) for m in child['data']['metrics'])['val_acc']}"
    assert value[:4] in page_text(browser)
    metrics = browser.find_elements(By.XPATH, "//*[normalize-space(text())='val_acc']")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", metrics[0])
    time.sleep(0.5)
    browser.save_screenshot(str(ARTIFACTS / "mlflow_ui_trial.png"))
    print(f"screenshots: {ARTIFACTS}/mlflow_ui_runs.png, mlflow_ui_trial.png (parent {parent['info']['run_id']})")
