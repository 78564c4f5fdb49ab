"""The job as the entry point runs it: the gate, then the task, with failure handling in one place.

- a user error (errors.UserError: a bad value, a missing dataset, an unreachable server) -> one
  line `error: <message>` on stderr and exit code 2, before any training; in a sweep it is raised
  instead, for the sweeper to record the trial as failed; in a plain multirun (`-m a=1,2`: Hydra's own
  sweeper, jobs in this process) the line is printed, the other jobs run, and train.py exits 2 at the
  end (`stopped_jobs`), where Hydra would print a traceback after the last job (a diverged job: the same,
  exit 1 unless bad input stopped another);
- a diverged run (errors.DivergedError) -> one line and exit code 1; in a sweep, the sweeper's
  Failed marker (a result of the trial: recorded FAIL, the sweep goes on, no crash counted);
- a sweep trial stopped by its pruner -> returns the sweeper's Pruned marker, a normal end;
- Ctrl-C -> one line saying how to resume and exit code 130 (the run context has marked the run KILLED);
  SIGTERM (sweeper/signals.py raises it as Ctrl-C) the same, with exit code 143, as a sweep ends on it;
  in a sweep either goes on to the sweeper.
Everything else is a bug and keeps its traceback.
"""
import sys

from errors import BudgetError, DivergedError, UserError
from sweeper.job import Failed, Pruned, TrialPruned, current_trial
from sweeper.signals import Terminated
from training.gate import check_config
from training.tasks import TASKS, in_multirun


# A plain multirun's jobs that bad input or divergence stopped: (job number, overrides, why, exit code); train.py
# reads it after the last job.
stopped_jobs = []


def run(cfg):
    """The gate, then the task. Returns what the task returns (None for a dry run)."""
    report = check_config(cfg)
    if cfg.dry_run:
        print(report.table())
        print(report.summary_line())
        return None
    if not report.feasible:
        raise BudgetError(report.over_budget_message())
    return TASKS[cfg.task](cfg, report)


def main(cfg):
    """run(cfg) for the Hydra entry point: user errors become one line and an exit code."""
    if _verbose():
        from training.tracking import loud_libraries
        loud_libraries()
    try:
        return run(cfg)
    except TrialPruned as pruned:
        return Pruned(str(pruned))  # a normal end for a sweep trial, not a job error
    except DivergedError as err:
        if current_trial() is not None:
            return Failed(f"diverged: {err}")
        print(f"error: {err}", file=sys.stderr, flush=True)
        if in_multirun() and _plain_multirun():
            return _stopped("diverged", 1)
        sys.exit(1)
    except UserError as err:
        if in_multirun() and not _plain_multirun():
            raise  # the sweeper records the trial as failed and goes on
        print(f"error: {err}", file=sys.stderr, flush=True)
        if in_multirun():
            return _stopped("bad input, before training", 2)
        sys.exit(2)
    except KeyboardInterrupt as stop:
        if in_multirun():
            raise  # the sweeper closes its trials and says so
        terminated = isinstance(stop, Terminated)
        print(f"{'terminated (SIGTERM)' if terminated else 'interrupted'}: the MLflow run is KILLED; the checkpoint "
              f"of the last finished epoch is kept: run the same command with trainer.resume=true to go on",
              file=sys.stderr, flush=True)
        sys.exit(143 if terminated else 130)  # the shell's codes for SIGTERM and Ctrl-C (a scheduler reads them)


def _stopped(reason, code):
    """Record this plain-multirun job as stopped (its line is printed); the next job runs."""
    from hydra.core.hydra_config import HydraConfig

    from sweeper.secrets import mask_url
    job = HydraConfig.get()
    stopped_jobs.append((job.job.num, [mask_url(o) for o in job.overrides.task], reason, code))


def _plain_multirun():
    """Hydra's own sweeper and launcher: the jobs run one after another in this process, and a job's exception
    would surface as a traceback after the last one (a sweep trial of sweeper/ has current_trial())."""
    from hydra.core.hydra_config import HydraConfig
    hydra_cfg = HydraConfig.get()
    return current_trial() is None and str(hydra_cfg.launcher.get("_target_", "")).endswith(".BasicLauncher")


def _verbose():
    from hydra.core.hydra_config import HydraConfig
    return HydraConfig.initialized() and bool(HydraConfig.get().verbose)
