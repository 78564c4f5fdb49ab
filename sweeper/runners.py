"""Running the trials: one Runner interface, two implementations.

LauncherRunner sends batches of n_jobs through the configured hydra/launcher (as the upstream plugin does) and
has every result when `collect` returns; PoolRunner starts each trial on a free slot of the device pool
(sweeper/pool.py) at once and `collect` returns those that ended within the poll. The loop (sweeper/core.py)
only proposes while `room` says so, `start`s each proposal, `collect`s, and judges crashes on `crash_basis`.
"""
import logging
import os
from typing import Protocol

from omegaconf import open_dict

from sweeper import job as job_api, secrets
from sweeper.display import LaunchLines
from sweeper.stores import anchored

log = logging.getLogger(__name__)


def share_identity(study_name, storage_url, parent, directions):
    """What every job of this sweep shares (study, storage, parent run) goes into this process's environment,
    which launched jobs inherit (the pool's workers, started earlier, get it with each trial); what differs per
    job goes into `hydra.job.env_set` (identity). Returns it."""
    shared = {job_api.ENV_STUDY: study_name, job_api.ENV_STORAGE: secrets.mask_url(anchored(storage_url or "")),
              job_api.ENV_PARENT_RUN: parent or "", job_api.ENV_DIRECTIONS: ",".join(directions),
              secrets.ENV: os.environ.get(secrets.ENV, "{}")}
    os.environ.update(shared)
    return shared


def identity(proposal, device=None):
    """Per-job environment (hydra.job.env_set, applied around the task function by every launcher)."""
    # Always set, empty for a new trial: an in-process launcher's next job must not inherit the last one's.
    env = {job_api.ENV_TRIAL: proposal.number, job_api.ENV_TRIAL_ID: proposal.trial_id,
           job_api.ENV_RESUME: getattr(proposal, "resume_from", ""),
           job_api.ENV_TAGS: ",".join(getattr(proposal, "tags", None) or ())}
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    quote = lambda v: "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"  # noqa: E731
    return [f"++hydra.job.env_set.{key}={quote(value)}" for key, value in env.items()]


class Runner(Protocol):
    def room(self, started):
        """Whether one more proposal can start now, `started` of them already this round."""

    def start(self, proposal):
        """Hand over a launched proposal (the pool starts it now; a launcher with its batch, in collect)."""

    def collect(self, started, timeout, wait):
        """(proposal, JobReturn) of trials that ended; `wait(function, *args, **kwargs)` runs any blocking wait."""

    def busy(self):
        """How many trials are still running in it."""

    def drain(self):
        """(proposal, JobReturn) of every trial still running, yielded as each ends."""

    def crash_basis(self, batch_crashes, batch_size, crashes, ended):
        """(crashed, out of, the crashes to show, `N trials ...` for the message) that max_failure_rate judges."""


class LauncherRunner:
    """Batches of n_jobs through hydra/launcher; the jobs are numbered in launch order."""

    def __init__(self, launcher, n_jobs):
        self.launcher, self.n_jobs, self.job_idx = launcher, n_jobs, 0
        self.lines = LaunchLines()  # the launcher's `#<job idx> : ...` lines, shown as `trial #<number>: ...`

    def room(self, started):
        return started < self.n_jobs

    def start(self, proposal):
        pass  # launched with its batch in collect

    def collect(self, started, timeout, wait):
        if not started:
            return []
        jobs = [tuple(p.overrides) + tuple(identity(p)) for p in started]
        for offset, proposal in enumerate(started):
            self.lines.expect(self.job_idx + offset, proposal.number)
        with self.lines:
            returns = self.launcher.launch(jobs, initial_job_idx=self.job_idx)
        self.job_idx += len(returns)
        return list(zip(started, returns))

    def busy(self):
        return 0

    def drain(self):
        yield from ()  # a batch has ended whole

    def crash_basis(self, batch_crashes, batch_size, crashes, ended):
        return len(batch_crashes), batch_size, batch_crashes, f"{batch_size} trials of the batch"


class PoolRunner:
    """The device pool: each trial starts on a free slot at once, composed here with its Hydra config."""

    def __init__(self, pool, config, config_loader, shared_env):
        self.pool, self.config, self.config_loader, self.shared_env = pool, config, config_loader, shared_env
        self.job_idx = 0

    def room(self, started):
        return self.pool.free_slot() is not None

    def start(self, proposal):
        slot = self.pool.free_slot()
        self.pool.start(slot, self.sweep_config(proposal, slot.device), proposal, self.shared_env)
        log.info(f"  trial #{proposal.number} on device {slot.device}: "
                 f"{' '.join(proposal.overrides[:len(proposal.trial.params)])}")

    def collect(self, started, timeout, wait):
        return self.pool.collect(timeout=timeout, wait_with=wait)

    def busy(self):
        return self.pool.busy()

    def drain(self):
        while self.pool.busy():  # never lose a finished trial: wait for the others
            yield from self.pool.collect(timeout=1.0)

    def crash_basis(self, batch_crashes, batch_size, crashes, ended):
        # A pool judges every trial of this run so far, as if its slots were one batch until more have ended:
        # otherwise the first trial to end, crashed, would be 1 of 1 and stop a sweep that allows 1 in 4.
        return len(crashes), max(ended, len(self.pool.slots)), crashes, f"the {ended} trials that ended"

    def sweep_config(self, proposal, device):
        """The trial's full Hydra config (the launchers compose their own)."""
        overrides = list(proposal.overrides) + identity(proposal, device)
        cfg = self.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg):
            cfg.hydra.job.id = str(self.job_idx)
            cfg.hydra.job.num = self.job_idx
        self.job_idx += 1
        return cfg
