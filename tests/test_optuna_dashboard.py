"""A sweep's Optuna study in Optuna Dashboard (`optuna-dashboard sqlite:///optuna.db`), in headless Chromium."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import browser, page_text, wait_for_text  # noqa: F401 - browser is a fixture
from tests.faultkit import REPO, free_port, stop_process_group, wait_for_port

ARTIFACTS = REPO / "tests" / "artifacts"  # screenshots (gitignored)


@pytest.fixture
def study(served_sweep, tmp_path):
    """The session's finished 2-trial sweep (tests/conftest.py: micro model, a grid over optimizer.lr): a copy of its
    study's <folder>/optuna.db, study `served` (the dashboard may write to the file it serves)."""
    copy = tmp_path / "optuna.db"
    shutil.copy(served_sweep.optuna_db, copy)
    return copy


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
    wait_for_text(browser, "served")
    browser.get(f"{dashboard}/dashboard/studies/1/trials")
    wait_for_text(browser, "served (id=1)", "Trial 0", "Complete", "optimizer.lr")
    text = page_text(browser)
    # the sweep's own attributes: the parameter count (constraint `params`) and the launched overrides
    assert "Trial 1" in text and "Best Trial" in text and "params 8530" in text and "overrides" in text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "optuna_dashboard_trials.png"))
