"""A run is closed whatever ends it, even when the store refuses a tag or a param on the way."""
import mlflow
import pytest

from tests.conftest import compose_cfg
from tests.faultkit import fresh_sqlite_store
from training.run_context import RunContext
from training.tracking import Tracker


class Report:
    total, train_gflops = 1000, 0.5


class LockedTags(Tracker):
    """A tracker whose store refuses tags, as a locked sqlite file does."""
    def set_tags(self, tags):
        raise RuntimeError("database is locked")


class Trial:
    parent_run_id, number = None, 0
    def close(self):
        pass


def tracker_for(cls, tmp_path):
    tracker = cls(compose_cfg(["model=tiny", f"mlflow.tracking_uri={fresh_sqlite_store(tmp_path)}"]))
    tracker.open()
    return tracker


@pytest.mark.parametrize("failure", [None, ValueError("boom")])
def test_a_refused_tag_still_ends_the_run(tmp_path, failure):
    tracker = tracker_for(LockedTags, tmp_path)
    with pytest.raises(ValueError) if failure else pytest.MonkeyPatch.context():
        with RunContext(tracker, Report(), trial=Trial()) as run:
            if failure:
                raise failure
    assert mlflow.active_run() is None
    status = mlflow.get_run(run.run_id).info.status
    assert status == ("FAILED" if failure else "FINISHED")


def test_a_refused_param_fails_the_run_instead_of_leaving_it_running(tmp_path, monkeypatch):
    tracker = tracker_for(Tracker, tmp_path)
    def refuse(params):
        raise RuntimeError("database is locked")
    monkeypatch.setattr(mlflow, "log_params", refuse)
    with pytest.raises(RuntimeError, match="locked"):
        with RunContext(tracker, Report()):
            pass
    assert mlflow.active_run() is None
    runs = mlflow.search_runs(experiment_ids=[tracker.experiment_id], output_format="list")
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.tags["error"] == "RuntimeError: database is locked"
