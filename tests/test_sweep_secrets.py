"""Masking and revealing passwords in URLs (sweeper/secrets.py); the end-to-end check, with PostgreSQL, is
tests/test_sweep_faults.py::test_two_workers_on_postgres_with_a_password_leave_no_copy_of_it."""
import pytest

from sweeper import secrets


@pytest.mark.parametrize("text, masked", [
    ("postgresql://user:pass@dbhost/optuna", "postgresql://user:***@dbhost/optuna"),
    ("hydra.sweeper.storage=postgresql+psycopg2://u:p%2Fw@10.0.0.1:5432/db", "hydra.sweeper.storage=postgresql+psycopg2://u:***@10.0.0.1:5432/db"),
    ("mysql://a:b@h/x and http://c:d@m:5000", "mysql://a:***@h/x and http://c:***@m:5000"),
    ("http://mlflow-host:5000", "http://mlflow-host:5000"),  # a port is not a password
    ("sqlite:////tmp/optuna.db", "sqlite:////tmp/optuna.db"),
    ("postgresql://user@dbhost/optuna", "postgresql://user@dbhost/optuna"),  # password in ~/.pgpass
    ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),  # a password without a user name
])
def test_mask_url(text, masked):
    assert secrets.mask_url(text) == masked
    assert secrets.has_password(text) == (text != masked)
    assert secrets.mask_url(masked) == masked


def test_the_sweepers_jobs_reveal_what_it_remembered(monkeypatch):
    monkeypatch.delenv(secrets.ENV, raising=False)
    secrets.remember("postgresql://u:first@a/optuna", None, "mlflow.tracking_uri=postgresql://u:second@b/mlflow")
    masked = secrets.mask_url("postgresql://u:first@a/optuna")
    assert secrets.reveal(masked) == "postgresql://u:first@a/optuna"
    assert secrets.reveal("postgresql://u:***@b/mlflow") == "postgresql://u:second@b/mlflow"  # same user, other host
    assert secrets.reveal("postgresql://u:***@c/other") == "postgresql://u:***@c/other"      # never seen: unchanged
    assert "first" not in masked and "second" not in secrets.mask_url("postgresql://u:second@b/mlflow")
