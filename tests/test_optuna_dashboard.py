"""A sweep's Optuna study in Optuna Dashboard (`optuna-dashboard sqlite:///optuna.db`), in headless Chromium."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import browser, page_text, wait_for_text  # noqa: F401 - browser is a fixture
from tests.faultkit import (REPO, fresh_sqlite_store, free_port, stop_process_group, sweep_args, train_env,
                            wait_for_port, write_cifar)

ARTIFACTS = REPO / "tests" / "artifacts"  # screenshots (gitignored)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished 2-trial sweep; its study lives in <folder>/optuna.db."""
    folder = tmp_path_factory.mktemp("dashboard")
    data = write_cifar(folder / "data")
    args = sweep_args(data, fresh_sqlite_store(folder / "mlflow"), f"sqlite:///{folder}/optuna.db", "browsed", 2,
                      folder / "multirun", epochs=1)
    done = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=folder, env=train_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "optuna.db"


@pytest.fixture
def dashboard(study):
    cli = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) or "optuna-dashboard"
    port = free_port()
    log = open(study.parent / "dashboard.log", "w")
    process = subprocess.Popen([cli, f"sqlite:///{study}", "--host", "127.0.0.1", "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, timeout=60, process=process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(process)


def test_optuna_dashboard_shows_the_study_and_its_trials(dashboard, browser):
    browser.get(f"{dashboard}/dashboard/")
    wait_for_text(browser, "browsed")
    browser.get(f"{dashboard}/dashboard/studies/1/trials")
    wait_for_text(browser, "browsed (id=1)", "Trial 0", "Complete", "optimizer.lr")
    text = page_text(browser)
    # the sweep's own attributes: the parameter count (constraint `params`) and the launched overrides
    assert "Trial 1" in text and "Best Trial" in text and "params 8530" in text and "overrides" in text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "optuna_dashboard_trials.png"))
