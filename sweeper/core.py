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
"""
import contextlib
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import optuna
from hydra.core.plugins import Plugins
from omegaconf import OmegaConf, open_dict, read_write
from optuna.trial import TrialState

from errors import SweepError, UsageError
from sweeper import job as job_api
from sweeper import compat, report, secrets, settings as settings_mod, space as space_mod, targets
from sweeper.compose import JobConfigs
from sweeper.constraints import INVALID_AMOUNT, Constraints, Verdict
from sweeper.pool import DevicePool, device_ids
from sweeper.preview import preview
from sweeper.sampler import ConstrainedSampler, is_placeholder
from sweeper.stores import open_storage
from sweeper.study import Heartbeats, set_attrs, tell, trained_trials

log = logging.getLogger(__name__)

SAMPLER_WHITELIST = ("hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*")


def _strings(container, prefix=""):
    """(dotted path, value) of every string in a nested dict/list container."""
    items = container.items() if isinstance(container, dict) else enumerate(container or [])
    for key, value in items:
        path = f"{prefix}{key}"
        if isinstance(value, (dict, list)):
            yield from _strings(value, f"{path}.")
        elif isinstance(value, str):
            yield path, value


@dataclass
class Proposal:
    trial: optuna.trial.Trial
    trial_id: int
    overrides: list
    kind: str = "feasible"  # feasible | over_budget | invalid | repeat
    measured: dict = field(default_factory=dict)
    note: str = ""

    @property
    def number(self):
        return self.trial.number


def readable(value):
    """1115018.0 -> 1115018, 0.25 -> 0.25: amounts as a person reads them."""
    return int(value) if isinstance(value, float) and value.is_integer() else (f"{value:.4g}" if isinstance(value, float) else value)


class ConstrainedSweep:
    def __init__(self, settings, hydra_context, task_function, config):
        self.conf = settings_mod.typed(settings)
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config
        self.whitelist = getattr(hydra_context, "execution_whitelist", None)
        self.directions = settings_mod.directions(self.conf)
        self.n_trials = int(self.conf.n_trials)
        self.job_idx = 0
        self.counts = {"feasible": 0, "over_budget": 0, "invalid": 0, "repeat": 0}
        self.rng = random.Random((settings_mod.sampler_spec(self.conf) or {}).get("seed"))
        self.silent_since = {}  # trial id -> when this process first saw it RUNNING without any heartbeat

    @property
    def s(self):
        """The settings by name (tests set and read them so): the typed config's own attributes, not a copy."""
        return vars(self.conf)

    # --- entry -------------------------------------------------------------------------------------
    def sweep(self, arguments):
        try:
            return self._sweep(list(arguments))
        except (UsageError, SweepError) as err:
            print(f"error: {secrets.mask_url(str(err))}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted: the trials in flight are recorded FAIL (user attr interrupted) and their MLflow runs "
                  "KILLED; the trained ones are kept. Run the same command again to go on.", file=sys.stderr, flush=True)
            raise SystemExit(130) from None  # the shell's code for Ctrl-C

    def _sweep(self, arguments):
        settings_mod.check_heartbeats(self.conf)
        arguments = self.hide_secrets(arguments)
        self.space, self.fixed = space_mod.parse(self.conf.params, arguments)
        self.extender = self.build_extender()
        if not self.space and self.extender is None:
            raise UsageError("hydra.sweeper.params: the search space is empty: give hydra.sweeper.params (a search "
                             "preset) or sweep overrides such as model.dropout='interval(0,0.3)'")
        self.job_configs = JobConfigs(self.hydra_context.config_loader, self.config)
        base = self.base_config()
        self.constraints = self.build(Constraints, self.conf.constraints, self.whitelist)
        self.build(job_api.build_pruner, self.conf.pruner)  # an unknown pruner stops here, not in the first job
        self.devices = self.build(device_ids, self.conf.devices)
        sampler = self.build_sampler()
        if self.conf.preview:
            return preview(self, sampler)
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
        self.tracking = report.Tracking(self.conf.mlflow)
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
        self.share_sweep_identity()
        already = len(trained_trials(study.get_trials(deepcopy=False)))
        if already:
            log.info(f"resuming: {already} of {self.n_trials} trials already trained")
        try:
            self.loop(study)
        except BaseException as err:
            if isinstance(err, KeyboardInterrupt):
                self.close_held(study)
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
                             self.hydra_context.config_loader, self.counts)
        except Exception as err:  # noqa: BLE001 - the trials are recorded; do not lose them behind a traceback
            self.tracking.finish(self.parent, "FAILED")
            reason = (secrets.mask_url(str(err)).strip().splitlines() or [""])[0]
            log.warning(f"the sweep's trials are recorded in study {self.study_name}, but its summary failed "
                        f"({type(err).__name__}: {reason})" + ("; MLflow parent run marked FAILED" if self.parent else ""))
        except BaseException:
            self.tracking.finish(self.parent, "KILLED")
            raise

    # --- set-up --------------------------------------------------------------------------------------
    @staticmethod
    def build(make, *args):
        try:
            return make(*args)
        except (ValueError, TypeError) as err:
            raise UsageError(str(err)) from err

    def hide_secrets(self, arguments):
        """Remember real URLs (for this process and its jobs) and mask them in everything passed on."""
        overrides = self.config.hydra.overrides
        secrets.remember(self.conf.storage, (self.conf.mlflow or {}).get("tracking_uri"), *arguments,
                         *overrides.hydra, *overrides.task)
        with read_write(overrides), open_dict(overrides):
            overrides.hydra = [secrets.mask_url(o) for o in overrides.hydra]
            overrides.task = [secrets.mask_url(o) for o in overrides.task]
        # Jobs are composed from the masked overrides, and Hydra requires their hydra.sweeper to equal this one.
        node = self.config.hydra.sweeper
        for path, value in _strings(OmegaConf.to_container(node, resolve=False)):
            if secrets.has_password(value):
                with read_write(node), open_dict(node):
                    OmegaConf.update(node, path, secrets.mask_url(value), merge=False)
        return [secrets.mask_url(a) for a in arguments]

    def build_extender(self):
        if not self.conf.custom_search_space:
            return None
        return self.build(targets.build, "hydra.sweeper.custom_search_space",
                          {"_target_": self.conf.custom_search_space, "_partial_": True}, self.whitelist)

    def base_config(self):
        """The job config without search values; every plain search key must be in it."""
        try:
            base = self.job_configs(self.fixed)
        except Exception as err:
            raise UsageError(f"the sweep's fixed overrides do not compose: {str(err).splitlines()[0]}") from err
        missing = space_mod.missing_keys(self.space, base, self.job_configs.is_group)
        if missing:
            choices = self.config.hydra.runtime.choices
            groups = [f"{g}={choices[g]}" for g in dict.fromkeys(k.split(".")[0] for k in missing) if g in choices]
            raise UsageError(
                f"hydra.sweeper.params: {', '.join(repr(k) for k in missing)} "
                f"{'is not a key' if len(missing) == 1 else 'are not keys'} of the config"
                + (f" ({', '.join(groups)})" if groups else "")
                + ": add it to that config, or search other keys (a hydra/sweeper/search preset that fits, "
                  "or the space on the command line)")
        return base

    def preflight(self, base):
        if not self.conf.preflight:
            return
        spec = dict(self.conf.preflight)
        spec.setdefault("_partial_", True)
        check = self.build(targets.build, "hydra.sweeper.preflight._target_", spec, self.whitelist)
        try:
            check(base)
        except Exception as err:  # noqa: BLE001 - the check's own message says what to change
            raise UsageError(str(err).strip() or type(err).__name__) from err

    def build_sampler(self):
        spec = dict(settings_mod.sampler_spec(self.conf) or {"_target_": "optuna.samplers.TPESampler"})
        inner = self.build(targets.build, "hydra.sweeper.sampler._target_", spec, SAMPLER_WHITELIST)
        self.grid = None
        if callable(inner) and getattr(inner, "func", None) is optuna.samplers.GridSampler:
            try:
                choices = space_mod.grid(self.space)
            except ValueError as err:
                raise UsageError(str(err)) from err
            inner = self.grid = inner(choices)
        return ConstrainedSampler(inner, n_startup_trials=spec.get("n_startup_trials", 0), seed=spec.get("seed"))

    def open_study(self, sampler):
        self.storage_url = self.conf.storage
        real = secrets.reveal(self.storage_url)
        try:
            if real:
                self.storage = open_storage(real, self.conf.heartbeat_interval, self.conf.grace_period)
            else:
                self.storage = optuna.storages.InMemoryStorage()
            study = optuna.create_study(study_name=self.conf.study_name, storage=self.storage, sampler=sampler,
                                        directions=self.directions, load_if_exists=True)
        except Exception as err:
            raise UsageError(f"hydra.sweeper.storage={secrets.mask_url(self.storage_url)}: cannot open the study "
                             f"({type(err).__name__}: {secrets.mask_url(str(err)).splitlines()[0]})") from err
        if not real:
            job_api.in_process_storages[study.study_name] = self.storage
        self.study_name, self.study_id = study.study_name, self.storage.get_study_id_from_name(study.study_name)
        self.heartbeats = Heartbeats(self.storage, self.conf.heartbeat_interval)
        return study

    # --- proposals -----------------------------------------------------------------------------------
    def propose_once(self, study):
        """Ask one trial and judge it. Returns a Proposal (kind feasible, over_budget, invalid or repeat; only a
        feasible one is still open) or None when a finite space has no configuration left to try."""
        trials = study.get_trials(deepcopy=False)
        known, seen, elsewhere = self.known(trials)
        self.waiting_for_others = False
        if self.exhausted(seen | elsewhere):
            # A configuration that only another worker's running trial holds is not done: if that worker died,
            # its trial is failed after grace_period and the configuration must run again. Wait for it.
            self.waiting_for_others = not self.exhausted(seen)
            return None
        seen = seen | elsewhere  # never steer to a configuration another worker is running
        if self.grid is not None and self.grid.is_exhausted(study):
            # The grid counts every finished cell as done, an interrupted (stale) trial's too: queue what is left.
            self.steer_to_unseen(study, seen)
        # The heartbeat first, the sampler after: a sampler can take seconds (GP, TPE on a long history), and
        # a worker killed in them must leave a trial whose heartbeat goes stale, not one without any.
        trial = study.ask()
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
        self.heartbeats.hold(trial_id, trial.number)
        for name, distribution in self.space.items():
            space_mod.suggest(trial, name, distribution)
        if self.extender is not None:
            self.extender(self.config, trial)
        params = dict(trial.params)
        proposal = Proposal(trial, trial_id, space_mod.as_overrides(params) + self.fixed)
        key = space_mod.params_key(params)
        if key in known:
            proposal.kind, proposal.note = "repeat", f"repeat of #{known[key]}"
            self.close(study, proposal, state=TrialState.FAIL, attrs={"repeat_of": known[key]})
        else:
            self.judge(study, proposal)
        if proposal.kind == "feasible":
            self.give_way_to_a_twin(study, proposal, key)
        if key in seen or proposal.kind == "repeat":  # a finite space's sampler may keep coming back: move on
            self.steer_to_unseen(study, seen | {key})
        return proposal

    def give_way_to_a_twin(self, study, proposal, key):
        """`known` was read before the ask: another worker may have proposed the same configuration since
        (with a seeded sampler every worker draws the same sequence). Read again now that this proposal's
        values are stored; the one that gives way is recorded as a repeat (`repeat_of`, `concurrent`).

        It gives way to a twin that trained, or that runs and either has the lower number or is already
        launched. Each worker stores its values before it reads, so of two twins the later reader sees the
        other; both are launched only if one of them stores its values and reads in the moment between the
        other's reading and its marking the trial launched."""
        if not isinstance(self.storage, optuna.storages.RDBStorage):
            return  # one process: `known` is up to date
        for t in study.get_trials(deepcopy=False):
            if t.number == proposal.number or space_mod.params_key(t.params) != key:
                continue
            if trained_trials([t]) or (t.state == TrialState.RUNNING and (
                    t.number < proposal.number or t.user_attrs.get("launched"))):
                proposal.kind, proposal.note = "repeat", f"repeat of #{t.number}, proposed by another worker at once"
                self.close(study, proposal, state=TrialState.FAIL, attrs={"repeat_of": t.number, "concurrent": True})
                return

    def judge(self, study, proposal):
        """Compose the proposal's job config once, run every constraint on it, record the verdict; a proposal
        that is over budget or invalid is told FAIL (a placeholder) and never launched."""
        try:
            verdict = self.constraints(self.job_configs(proposal.overrides))
        except Exception as err:  # noqa: BLE001 - a value Hydra cannot compose: invalid, like any refused config
            verdict = Verdict(amounts={n: INVALID_AMOUNT for n in self.constraints.names},
                              invalid=(str(err).strip().splitlines() or [type(err).__name__])[0])
        if verdict.invalid is not None:  # the check's own words, which may quote a URL with its password
            verdict.invalid = secrets.mask_url(verdict.invalid)
        for name, amount in verdict.amounts.items():
            proposal.trial.set_constraint(name, amount)
        proposal.measured = verdict.measured
        attrs = dict(verdict.measured)
        if verdict.feasible:
            set_attrs(proposal.trial, attrs)
            return
        if verdict.invalid is not None:
            proposal.kind, proposal.note = "invalid", f"invalid: {verdict.invalid}"
            attrs.update(invalid=True, reason=verdict.invalid)
        else:
            over = ", ".join(f"{name} +{readable(amount)}" for name, amount in verdict.over().items())
            proposal.kind, proposal.note = "over_budget", f"over budget ({over})"
            attrs.update(infeasible=True, reason=f"over budget: {over}")
        self.close(study, proposal, state=TrialState.FAIL, attrs=attrs)

    def propose(self, study):
        """The next feasible, new proposal; None when the space is exhausted."""
        for _ in range(self.conf.max_proposals_per_trial):
            proposal = self.propose_once(study)
            if proposal is None or proposal.kind == "feasible":
                return proposal
            self.counts[proposal.kind] += 1
            log.info(f"  proposal #{proposal.number} not launched: {proposal.note} "
                     f"({' '.join(proposal.overrides[:len(proposal.trial.params)])})")
        raise SweepError(
            f"{self.conf.max_proposals_per_trial} proposals in a row were over budget, invalid or repeats, so the "
            f"sweep stopped instead of spinning. Shrink the search space or loosen the budget, or raise "
            f"hydra.sweeper.max_proposals_per_trial.")

    def known(self, trials):
        """(params key -> number of a trained or running trial, keys of the search space's configurations
        already trained, judged infeasible or running here, keys of those running in another worker). An
        interrupted trial's configuration is not known: it is tried again."""
        known, seen, elsewhere = {}, set(), set()
        mine = self.heartbeats.numbers()
        for t in trials:
            key = space_mod.params_key(t.params)
            if t.state == TrialState.RUNNING or trained_trials([t]):
                known.setdefault(key, t.number)
            elif not is_placeholder(t):
                continue
            if space_mod.in_space(self.space, t.params):
                (elsewhere if t.state == TrialState.RUNNING and t.number not in mine else seen).add(key)
        return known, seen, elsewhere

    def exhausted(self, seen):
        """A finite space (grid, or every parameter discrete) whose every configuration has been judged."""
        if self.extender is not None:
            return False
        size = space_mod.size(self.space)
        return size is not None and len(seen) >= size

    def steer_to_unseen(self, study, seen):
        """Queue a configuration of a finite space not tried yet (after a repeat, or when the grid thinks it is done)."""
        if self.extender is None:
            cell = space_mod.unseen_cell(self.space, seen, self.rng)
            if cell is not None:
                study.enqueue_trial(cell)

    def close(self, study, proposal, state, values=None, attrs=None):
        """Record how a trial ended and stop its heartbeat."""
        if attrs:
            set_attrs(proposal.trial, attrs)
        recorded = tell(study, proposal.number, state=state, values=values)
        self.heartbeats.release(proposal.trial_id)
        return recorded

    # --- the loop --------------------------------------------------------------------------------------
    def remaining(self, trials):
        """Trials still to start: n_trials less the trained ones and every trial in flight (any worker's,
        launched or not: a dead worker's stays in flight until its heartbeat is stale)."""
        running = sum(1 for t in trials if t.state == TrialState.RUNNING)
        return self.n_trials - len(trained_trials(trials)) - running, running

    def withdrawn(self, study, proposal):
        """Two workers can both see the last slot free and both propose: the higher trial number gives way."""
        trials = study.get_trials(deepcopy=False)
        ahead = len(trained_trials(trials)) + sum(
            1 for t in trials if t.state == TrialState.RUNNING and t.number < proposal.number)
        if ahead < self.n_trials:
            return False
        self.close(study, proposal, state=TrialState.FAIL, attrs={"withdrawn": True})
        log.info(f"  proposal #{proposal.number} withdrawn: another worker took the last trial")
        return True

    def share_sweep_identity(self):
        """What every job of this sweep shares (study, storage, parent run) goes into this process's
        environment, which launched jobs inherit (the pool's workers, started earlier, get it with each
        trial); what differs per job goes into `hydra.job.env_set`."""
        self.shared_env = {job_api.ENV_STUDY: self.study_name, job_api.ENV_STORAGE: secrets.mask_url(self.storage_url or ""),
                           job_api.ENV_PARENT_RUN: self.parent or "", job_api.ENV_DIRECTIONS: ",".join(self.directions),
                           secrets.ENV: os.environ.get(secrets.ENV, "{}")}
        os.environ.update(self.shared_env)

    def identity(self, proposal, device=None):
        """Per-job environment (hydra.job.env_set, applied around the task function by every launcher)."""
        env = {job_api.ENV_TRIAL: proposal.number, job_api.ENV_TRIAL_ID: proposal.trial_id}
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        quote = lambda v: "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"  # noqa: E731
        return [f"++hydra.job.env_set.{key}={quote(value)}" for key, value in env.items()]

    def mark_launched(self, proposal):
        self.counts["feasible"] += 1
        # A list, as the launcher gets them: a value may hold spaces (`name=cifar sweep`), so no joined string.
        set_attrs(proposal.trial, {"launched": True, "overrides": list(proposal.overrides)})

    def loop(self, study):
        """Keep every slot busy (pool) or run batches of n_jobs (launcher) until n_trials have trained,
        the space is exhausted, or too many jobs crash."""
        if self.pool:
            log.info("devices given: trials run in the sweeper's device pool (hydra/launcher is not used)")
        else:
            self.launcher = Plugins.instance().instantiate_launcher(
                config=self.config, hydra_context=self.hydra_context, task_function=self.task_function)
        poll = min(5.0, float(self.conf.heartbeat_interval))
        self.exhausted_space, self.started_at, self.crashes, self.ended = False, time.perf_counter(), [], 0
        self.stopped_by = None  # a SweepError from proposing: raised once the trials in flight are recorded
        self.waiting_for_others = False  # a finite space's last configurations are other workers' running trials
        with self.interrupts_at_waits():
            while True:
                optuna.storages.fail_stale_trials(study)  # a dead worker's trials, once their heartbeat is stale
                self.fail_silent_trials()                  # and those that never had a heartbeat
                started = self.start_trials(study)
                if self.pool:
                    results = self.pool.collect(timeout=poll, wait_with=self.wait)
                else:
                    results = list(zip(started, self.launch(started))) if started else []
                self.record_all(study, results)
                if (self.pool and self.pool.busy()) or results:
                    continue
                if self.stopped_by is not None:
                    raise self.stopped_by
                left, running = self.remaining(study.get_trials(deepcopy=False))
                if self.exhausted_space or (left <= 0 and running == 0):
                    return
                if left <= 0 or self.waiting_for_others:
                    self.wait(time.sleep, poll)  # other workers' trials are in flight: one may fail and free its slot

    @contextlib.contextmanager
    def interrupts_at_waits(self):
        """With a pool, this process only proposes, records and waits, so Ctrl-C is taken while it waits:
        one that lands inside a storage call is held until the next wait. (Taken at once, it was once raised
        in SQLAlchemy's connection-pool clean-up, which printed its own traceback before the sweep's line.)
        With a launcher the trials run in this process and take Ctrl-C themselves, as they always did."""
        self.waiting, self.interrupt_pending = False, False
        if not self.pool or signal.getsignal(signal.SIGINT) is not signal.default_int_handler \
                or threading.current_thread() is not threading.main_thread():
            yield  # SIGINT ignored (a background job) or handled by someone else: left as it is
            return

        def on_sigint(signum, frame):
            if self.waiting:
                raise KeyboardInterrupt
            self.interrupt_pending = True

        signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def wait(self, function, *args, **kwargs):
        """Run a wait (the pool's wait for a trial to end, a sleep) as the one place a held Ctrl-C is raised."""
        self.waiting = True
        try:
            if self.interrupt_pending:
                raise KeyboardInterrupt
            return function(*args, **kwargs)
        finally:
            self.waiting = False

    def close_held(self, study):
        """Ctrl-C: the trials this process holds will never report. Record them FAIL (user attr `interrupted`)
        now, so that a re-run proposes their configurations again at once instead of first waiting
        grace_period for their heartbeats to go stale (the summary then marks their MLflow runs KILLED)."""
        with self.heartbeats.lock:
            held = dict(self.heartbeats.held)
        for trial_id, number in held.items():
            try:
                self.storage.set_trial_user_attr(trial_id, "interrupted", True)
            except Exception:  # noqa: BLE001 - closed by another process meanwhile: its verdict stands
                continue
            if number is not None and tell(study, number, state=TrialState.FAIL):
                log.info(f"  trial #{number}: interrupted, recorded FAIL")
            self.heartbeats.release(trial_id)

    def fail_silent_trials(self):
        """Fail another worker's RUNNING trial that has had no heartbeat at all for grace_period.

        Optuna's stale-trial check compares heartbeat rows, so a worker killed between creating a trial and
        its first heartbeat (milliseconds) leaves a trial that it never fails, and that every worker counts
        in flight for ever. The time is this process's own (since it first saw the trial without a
        heartbeat), not the trial's start: that is written with the creating machine's local clock, which
        another machine may not share (time zones)."""
        if not (isinstance(self.storage, optuna.storages.RDBStorage) and self.storage.get_heartbeat_interval()):
            return
        now, grace = time.monotonic(), float(self.conf.grace_period)
        silent = compat.running_without_heartbeat(self.storage, self.study_id) - set(self.heartbeats.held)
        self.silent_since = {tid: self.silent_since.get(tid, now) for tid in silent}
        for trial_id, since in list(self.silent_since.items()):
            if now - since < grace:
                continue
            try:
                if self.storage.set_trial_state_values(trial_id, TrialState.FAIL):
                    log.info(f"  trial id {trial_id}: RUNNING without a heartbeat for {grace:.0f}s (its worker died "
                             f"before its first one): failed, its slot is free")
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # it ended meanwhile, or another worker failed it first
            del self.silent_since[trial_id]

    def start_trials(self, study):
        """Propose into every free slot (pool: started at once; launcher: one batch, returned)."""
        batch = []
        while not (self.exhausted_space or self.stopped_by) and (
                self.pool.free_slot() is not None if self.pool else len(batch) < int(self.conf.n_jobs)):
            if self.remaining(study.get_trials(deepcopy=False))[0] <= 0:
                break
            try:
                proposal = self.propose(study)
            except SweepError as err:  # launch nothing more; the batch so far and the pool's trials still end
                self.stopped_by = err
                break
            if proposal is None:
                if self.waiting_for_others:
                    break  # the loop sleeps, then proposes again
                self.exhausted_space = True
                log.info("every configuration of the search space has been tried")
                break
            if self.withdrawn(study, proposal):
                break
            self.mark_launched(proposal)
            batch.append(proposal)
            if self.pool:
                slot = self.pool.free_slot()
                self.pool.start(slot, self.sweep_config(proposal, slot.device), proposal, self.shared_env)
                log.info(f"  trial #{proposal.number} on device {slot.device}: "
                         f"{' '.join(proposal.overrides[:len(proposal.trial.params)])}")
        return batch

    def record_all(self, study, results):
        """Record finished trials; stop the sweep, as the plugin does, when more than max_failure_rate of a
        batch crashed (with a pool, which has no batches: of this run's finished trials, and of at least as
        many as it has slots)."""
        if not results:
            return
        crashes = [crash for proposal, ret in results if (crash := self.record(study, proposal, ret)) is not None]
        self.crashes += crashes
        self.ended += len(results)
        done = len(trained_trials(study.get_trials(deepcopy=False)))
        log.info(f"[{done}/{self.n_trials} trained | {self.counts['over_budget']} over budget, "
                 f"{self.counts['invalid']} invalid, {self.counts['repeat']} repeats skipped | "
                 f"{time.perf_counter() - self.started_at:.0f}s]")
        # A pool judges every trial of this run so far, as if its slots were one batch until more have ended:
        # otherwise the first trial to end, crashed, would be 1 of 1 and stop a sweep that allows 1 in 4.
        failed, ended = (len(self.crashes), max(self.ended, len(self.pool.slots))) if self.pool else (
            len(crashes), len(results))
        if failed and failed / ended > float(self.conf.max_failure_rate):
            while self.pool and self.pool.busy():  # never lose a finished trial: wait for the others
                for proposal, ret in self.pool.collect(timeout=1.0):
                    self.record(study, proposal, ret)
            # One line, not the job's traceback: each crash's reason is in its trial (fail_reason) and its log.
            shown = self.crashes if self.pool else crashes
            counted = f"the {self.ended} trials that ended" if self.pool else f"{len(results)} trials of the batch"
            raise SweepError(f"hydra.sweeper.max_failure_rate={self.conf.max_failure_rate}: {failed} of {counted} "
                             f"crashed ({'; '.join(shown[:3])}{'; ...' if len(shown) > 3 else ''}): see each trial's "
                             f"log, or allow more")

    def sweep_config(self, proposal, device):
        """The trial's full Hydra config for the pool (the launchers compose their own)."""
        overrides = list(proposal.overrides) + self.identity(proposal, device)
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg):
            cfg.hydra.job.id = str(self.job_idx)
            cfg.hydra.job.num = self.job_idx
        self.job_idx += 1
        return cfg

    def launch(self, batch):
        jobs = [tuple(p.overrides) + tuple(self.identity(p)) for p in batch]
        returns = self.launcher.launch(jobs, initial_job_idx=self.job_idx)
        self.job_idx += len(returns)
        return returns

    def record(self, study, proposal, ret):
        """Tell the study how a launched trial ended. Returns `#N <reason's first line>` for a job that crashed."""
        try:
            value = ret.return_value  # re-raises the job's exception
        except Exception as err:  # noqa: BLE001 - every job error is recorded, then judged by max_failure_rate
            reason = secrets.mask_url(f"{type(err).__name__}: {err}")[:1000]
            self.close(study, proposal, TrialState.FAIL, attrs={"fail_reason": reason})
            log.warning(f"  trial #{proposal.number} failed: {reason}")
            return f"#{proposal.number} {reason.strip().splitlines()[0]}"
        if isinstance(value, job_api.Pruned):
            self.close(study, proposal, TrialState.PRUNED)
            log.info(f"  trial #{proposal.number} pruned: {value.message}")
            return None
        if isinstance(value, job_api.Failed):
            reason = secrets.mask_url(str(value.reason))[:1000]
            self.close(study, proposal, TrialState.FAIL, attrs={"fail_reason": reason})
            log.warning(f"  trial #{proposal.number} failed: {reason}")
            return None
        values = self.numbers(value)
        if values is None:
            reason = (f"the job returned {value!r}, not {'a number' if len(self.directions) == 1 else f'{len(self.directions)} numbers'}")
            self.close(study, proposal, TrialState.FAIL, attrs={"fail_reason": reason[:1000]})
            log.warning(f"  trial #{proposal.number}: {reason}; recorded as FAIL, the sweep goes on")
            return None
        self.close(study, proposal, TrialState.COMPLETE, values=values)
        shown = " ".join(f"{k}={v}" for k, v in proposal.measured.items())
        log.info(f"  trial #{proposal.number}: value {', '.join(f'{v:.4f}' for v in values)}{' | ' + shown if shown else ''}")
        return None

    def numbers(self, value):
        """The job's return as finite floats, one per direction; None if it is not that."""
        items = list(value) if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else [value]
        try:
            numbers = [float(v) for v in items if not isinstance(v, (str, bool))]
        except (TypeError, ValueError):
            return None
        if len(numbers) != len(items) or len(numbers) != len(self.directions):
            return None
        return numbers if all(math.isfinite(v) for v in numbers) else None
