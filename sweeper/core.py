"""The constrained Optuna sweep: propose, check, launch, record; safe with several workers on one study.

One proposal at a time: `study.ask`, its heartbeat, the search space's values, the job config composed once
(sweeper/compose.py) and handed to every constraint; an over-budget or invalid proposal, or one that
repeats a trained or running trial, is recorded as FAIL with a user attr saying why and never
launched. Feasible proposals go to the configured launcher in batches of `n_jobs` (as the upstream
plugin does) or, with `devices`, to a pool that keeps every slot busy (sweeper/pool.py).

Concurrency: from `ask` until `tell`, this process keeps the trial's heartbeat (queued, launched,
waiting for batch-mates), so no other worker takes a live trial for dead. A trial whose heartbeat
stopped (its worker was killed) is failed by `optuna.storages.fail_stale_trials` after
`grace_period` and its slot proposed again (one that never had a heartbeat too: fail_silent_trials);
until then other workers count it as in flight and wait. A result for a trial that another process
has already closed is logged, not raised.

ConstrainedSweep only coordinates; each job is elsewhere: the plugin's typed settings (sweeper/settings.py),
set-up (sweeper/setup.py), proposing (Proposer, sweeper/propose.py), the study, its heartbeats and dead
workers' trials (StudyStore, sweeper/study.py), running (LauncherRunner and PoolRunner, sweeper/runners.py),
the MLflow parent run (sweeper/tracking.py) and the summary (sweeper/report.py).
"""
import logging
import sys
import time

from hydra.core.plugins import Plugins
from omegaconf import OmegaConf

from errors import SweepError, UsageError
from sweeper import job as job_api
from sweeper import display, report, runners, secrets, settings as settings_mod, setup, signals, space as space_mod
from sweeper import starts
from sweeper.compose import JobConfigs
from sweeper.confirm import Confirmation
from sweeper.constraints import Constraints
from sweeper.pool import DevicePool, device_ids
from sweeper.preview import preview
from sweeper.propose import Proposal, Proposer, readable  # noqa: F401 - Proposal, readable: importable here as before
from sweeper.resume import Resumer
from sweeper.study import StudyStore, tell, trained_trials  # noqa: F401 - tell: importable here as before
from sweeper.tracking import Tracking

log = logging.getLogger(__name__)


def _part(owner, name, settable=False):
    """`sweep.<name>` as the attribute of one of its parts (tests/test_sweep_loop.py reaches them through the sweep)."""
    return property(lambda self: getattr(getattr(self, owner), name),
                    (lambda self, value: setattr(getattr(self, owner), name, value)) if settable else None)


class ConstrainedSweep:
    """The coordinator: set-up from the plugin's settings, then the StudyStore (sweeper/study.py), the Proposer
    (sweeper/propose.py) and the trials' runs, until n_trials have trained; then the summary (sweeper/report.py)."""

    storage, storage_url, study_name, study_id, heartbeats, close = (
        _part("store", name) for name in ("storage", "storage_url", "study_name", "study_id", "heartbeats", "close"))
    propose_once, mark_launched = _part("proposer", "propose_once"), _part("proposer", "mark_launched")
    known = _part("proposer", "known", settable=True)

    def __init__(self, settings, hydra_context, task_function, config):
        self.conf = settings_mod.typed(settings)
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config
        self.whitelist = getattr(hydra_context, "execution_whitelist", None)
        self.directions = settings_mod.directions(self.conf)
        self.n_trials = int(self.conf.n_trials)
        self.store = self.proposer = self.resumer = None  # StudyStore, Proposer, Resumer once the study is open
        # Set by _sweep (tests/test_sweep_loop.py sets them directly), then by run and loop.
        self.space = self.fixed = self.extender = self.job_configs = self.constraints = self.grid = None
        self.devices = self.pool = self._runner = self.tracking = self.parent = None
        self.confirmation = self.confirmed = None  # hydra.sweeper.confirm (sweeper/confirm.py) and its Outcome
        self.shared_env = {}  # what every job of the sweep shares (runners.share_identity), set in run
        self.exhausted_space, self.stopped_by = False, None  # stopped_by: a SweepError from proposing, raised
        # once the trials in flight are recorded
        self.started_at, self.crashes, self.ended = time.perf_counter(), [], 0  # this run's ended trials, crashes
        self.waiting, self.interrupt_pending = False, False  # Ctrl-C held until the next wait (interrupts_at_waits)
        self.clock = display.SweepClock(self.n_trials)  # restarted by loop, with the trials already trained

    @property
    def s(self):
        """The settings by name (tests set and read them so): the typed config's own attributes, not a copy."""
        return vars(self.conf)

    # --- entry -------------------------------------------------------------------------------------
    def sweep(self, arguments):
        try:
            with signals.terminate_as_interrupt():  # SIGTERM (a scheduler's preemption, kill) is handled as Ctrl-C
                return self._sweep(list(arguments))
        except (UsageError, SweepError) as err:
            print(f"error: {secrets.mask_url(str(err))}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        except KeyboardInterrupt as err:
            terminated = isinstance(err, signals.Terminated)
            print(f"{'terminated (SIGTERM)' if terminated else 'interrupted'}: the trials in flight are recorded FAIL "
                  "(user attr interrupted) and their MLflow runs KILLED; the trained ones are kept. Run the same command "
                  "again to go on: each interrupted trial resumes from its last epoch checkpoint.",
                  file=sys.stderr, flush=True)
            raise SystemExit(143 if terminated else 130) from None  # the shell's codes for SIGTERM and Ctrl-C

    def _sweep(self, arguments):
        settings_mod.check_all(self.conf)
        arguments = setup.hide_secrets(self.config, self.conf, arguments)
        setup.requires(self.conf, self.config)
        self.space, self.fixed = space_mod.parse(self.conf.params, arguments, self.conf.when)
        self.extender = self.build_extender()
        self.starts = starts.check(self.conf, self.space)  # baselines and warm start: checked before any trial
        if not self.space and self.extender is None:
            raise UsageError("hydra.sweeper.params: the search space is empty: give hydra.sweeper.params (a search "
                             "preset) or sweep overrides such as model.dropout='interval(0,0.3)'")
        self.job_configs = JobConfigs(self.hydra_context.config_loader, self.config)
        base = setup.base_config(self.job_configs, self.fixed, self.space, self.config)
        self.confirmation = Confirmation.from_settings(self.conf.confirm, self.directions, base)
        self.constraints = self.build(Constraints, self.conf.constraints, self.whitelist)
        self.build(job_api.build_pruner, self.conf.pruner)  # an unknown pruner stops here, not in the first job
        self.devices = self.build(device_ids, self.conf.devices)
        sampler = self.build_sampler()
        if self.conf.preview:
            return preview(self.conf, self.directions, sampler, lambda store: Proposer.for_sweep(self, store))
        self.preflight(base)
        # Started now, so that the pool's workers import the app while the study and MLflow open.
        self.pool = self.build(DevicePool, self.devices, int(self.conf.trials_per_device), self.task_function,
                               self.hydra_context) if self.devices else None
        try:
            self.run(self.open_study(sampler))
        except KeyboardInterrupt:
            if self.pool:
                self.pool.interrupt()  # its trials end KILLED now, instead of holding the exit until they finish
            raise
        finally:
            if self.pool:
                self.pool.shutdown(wait=False)  # they exit in the background (the interpreter joins them)

    def run(self, study):
        self.tracking = Tracking(self.conf.mlflow)
        try:
            self.parent = self.tracking.parent_run(study, self.storage)
        except Exception as err:
            raise UsageError(f"mlflow.tracking_uri={secrets.mask_url(self.tracking.uri)}: cannot open the MLflow "
                             f"store ({type(err).__name__}: {secrets.mask_url(str(err)).splitlines()[0]})") from err
        log.info(f"Study {study.study_name} in {secrets.mask_url(self.storage_url) or 'memory'} | "
                 f"sampler {study.sampler} | directions {self.directions} | "
                 f"pruner {(self.conf.pruner or {}).get('name', 'none')} | "
                 + (f"devices {self.devices} x {self.conf.trials_per_device}" if self.devices else
                    f"batches of {self.conf.n_jobs}") + (f" | MLflow parent run {self.parent}" if self.parent else ""))
        self.shared_env.update(runners.share_identity(self.study_name, self.storage_url, self.parent, self.directions))
        already = len(trained_trials(study.get_trials(deepcopy=False)))
        if already:
            log.info(f"resuming: {already} of {self.n_trials} trials already trained")
        try:
            self.loop(study)
            if self.confirmation is not None:  # the best top_k retrained with new seeds
                self.confirmed = self.confirmation.run(self, study)
        except BaseException as err:
            if isinstance(err, KeyboardInterrupt):
                self.store.close_held(study)
            self.tracking.finish(self.parent, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise
        finally:
            self.heartbeats.stop()
        self.summarize(study)

    def summarize(self, study):
        """The end-of-sweep report. Every trial's result is in the study by now, so a failure here (the tracking
        store, a plot, a config that no longer composes) is one warning line and the sweep still succeeds;
        whatever happens, the parent run ends (FAILED when the summary did not finish)."""
        try:
            self.parent = self.tracking.settle(study, self.storage, self.parent)
            self.tracking.close_interrupted(study, self.parent)
            report.summarize(self.tracking, self.config, study, self.parent, self.directions, self.conf.objective_names,
                             self.hydra_context.config_loader, self.proposer.counts, self.confirmed)
        except Exception as err:  # noqa: BLE001 - the trials are recorded; do not lose them behind a traceback
            self.tracking.finish(self.parent, "FAILED")
            reason = (secrets.mask_url(str(err)).strip().splitlines() or [""])[0]
            log.warning(f"the sweep's trials are recorded in study {self.study_name}, but its summary failed "
                        f"({type(err).__name__}: {reason})" + ("; MLflow parent run marked FAILED" if self.parent else ""))
        except BaseException:
            self.tracking.finish(self.parent, "KILLED")
            raise

    # --- the study and its proposer ----------------------------------------------------------------------------
    def open_study(self, sampler):
        """Open (or resume) the study; the Proposer works on it from then on."""
        verbose = bool(OmegaConf.select(self.config, "hydra.verbose", default=False))
        self.store, study = StudyStore.open(self.conf, sampler, self.directions, verbose=verbose)
        self.proposer = Proposer.for_sweep(self, self.store)
        starts.prepare(study, getattr(self, "starts", None), self.space)
        self.resumer = Resumer(self.store)
        trained = trained_trials(study.get_trials(deepcopy=False))
        changed = space_mod.changed_keys(self.space, trained)
        if changed:  # a re-run with another space under the same study name mixes both, and counts the old trials
            keys = f"{', '.join(changed)} {'differs' if len(changed) == 1 else 'differ'}"
            log.warning(f"study {study.study_name}: its trained trials ({len(trained)}) come from another search space "
                        f"({keys}); they count towards n_trials and guide the sampler. For a fresh study, set "
                        f"hydra.sweeper.study_name")
        return study

    # --- set-up (sweeper/setup.py); these four are the sweep's own so that tests can call them on it ----------
    build = staticmethod(setup.build)

    def build_extender(self):
        return setup.extender(self.conf, self.whitelist)

    def preflight(self, base):
        setup.preflight(self.conf, self.whitelist, base)

    def build_sampler(self):
        sampler, self.grid = setup.sampler(self.conf, self.space)
        return sampler

    # --- the loop --------------------------------------------------------------------------------------
    def loop(self, study):
        """Keep every slot busy (pool) or run batches of n_jobs (launcher) until n_trials have trained,
        the space is exhausted, or too many jobs crash."""
        if self.pool:
            log.info("devices given: trials run in the sweeper's device pool (hydra/launcher is not used)")
        runner = self.runner
        poll = min(5.0, float(self.conf.heartbeat_interval))
        self.exhausted_space, self.started_at, self.crashes, self.ended = False, time.perf_counter(), [], 0
        self.stopped_by = None
        self.clock = display.SweepClock(self.n_trials, already=len(trained_trials(study.get_trials(deepcopy=False))))
        with self.interrupts_at_waits():
            while True:
                self.store.fail_dead_trials(study)  # a dead worker's trials: heartbeat stale, or never had one
                if self.tracking is not None:  # ... and their MLflow runs, which their dead worker left RUNNING
                    self.tracking.close_interrupted(study, self.parent)
                started = self.start_trials(study)
                results = runner.collect(started, timeout=poll, wait=self.wait)
                self.record_all(study, results)
                if runner.busy() or results:
                    continue
                if self.stopped_by is not None:
                    raise self.stopped_by
                left, running = self.proposer.remaining(study.get_trials(deepcopy=False))
                if self.exhausted_space or (left <= 0 and running == 0):
                    return
                if left <= 0 or self.proposer.waiting_for_others:
                    self.wait(time.sleep, poll)  # other workers' trials are in flight: one may fail and free its slot

    # Signals with a pool: taken at waits only (sweeper/signals.py); tests call them on a stand-in sweep.
    interrupts_at_waits, wait = signals.interrupts_at_waits, signals.wait

    @property
    def runner(self):
        """Where the trials run (sweeper/runners.py): the device pool's slots, or hydra/launcher (instantiated
        on first use) in batches of n_jobs."""
        if self._runner is None:
            self._runner = runners.PoolRunner(self.pool, self.config, self.hydra_context.config_loader,
                                              self.shared_env) if self.pool else runners.LauncherRunner(
                Plugins.instance().instantiate_launcher(config=self.config, hydra_context=self.hydra_context,
                                                        task_function=self.task_function), int(self.conf.n_jobs))
        return self._runner

    def start_trials(self, study):
        """Propose into every free slot (pool: started at once; launcher: one batch, returned)."""
        batch = []
        while not (self.exhausted_space or self.stopped_by) and self.runner.room(len(batch)):
            if self.proposer.remaining(study.get_trials(deepcopy=False))[0] <= 0:
                break
            try:
                # An interrupted trial goes on from its checkpoint before any new configuration (sweeper/resume.py).
                proposal = self.resumer.next(study) if self.resumer else None
                proposal = proposal or self.proposer.propose(study)
            except SweepError as err:  # launch nothing more; the batch so far and the pool's trials still end
                self.stopped_by = err
                break
            if proposal is None:
                if self.proposer.waiting_for_others:
                    break  # the loop sleeps, then proposes again
                self.exhausted_space = True
                log.info("every configuration of the search space has been tried")
                break
            if self.proposer.withdrawn(study, proposal):
                break
            self.proposer.mark_launched(proposal)
            batch.append(proposal)
            self.runner.start(proposal)
        return batch

    def record_all(self, study, results):
        """Record finished trials; stop the sweep, as the plugin does, when more than max_failure_rate of a
        batch crashed (with a pool, which has no batches: of this run's finished trials, and of at least as
        many as it has slots)."""
        if not results:
            return
        crashes = [crash for proposal, ret in results
                   if (crash := self.store.record(study, proposal, ret, self.directions)) is not None]
        self.crashes += crashes
        self.ended += len(results)
        done = len(trained_trials(study.get_trials(deepcopy=False)))
        estimate = self.clock.estimate(done)
        if estimate:
            log.info(estimate)
        log.info(self.clock.status(done, self.proposer.counts))
        failed, ended, shown, counted = self.runner.crash_basis(crashes, len(results), self.crashes, self.ended)
        if failed and failed / ended > float(self.conf.max_failure_rate):
            for proposal, ret in self.runner.drain():
                self.store.record(study, proposal, ret, self.directions)
            # One line, not the job's traceback: each crash's reason is in its trial (fail_reason) and its log.
            raise SweepError(f"hydra.sweeper.max_failure_rate={self.conf.max_failure_rate}: {failed} of {counted} "
                             f"crashed ({'; '.join(shown[:3])}{'; ...' if len(shown) > 3 else ''}): see each trial's "
                             f"log, or allow more")
