"""One job's tracked run, from start to end, whatever ends it.

    with RunContext(tracker, report, trial=..., checkpoint_path=...) as run:
        ...train, log through run.tracker...

On the way in it starts (or, resuming, reopens) the MLflow run. On the way out it closes it with
the status that says what happened: finished -> FINISHED; pruned by the sweep's pruner or stopped
with Ctrl-C, SIGTERM or a requeue's exit -> KILLED; diverged or any error -> FAILED, with the error kept as the run's `error`
tag. In a sweep the `trial_state` tag says what the sweeper records (COMPLETE, PRUNED, FAIL), the
trial's reporter is closed, and a pruned trial's checkpoint is dropped (it is never continued).
This is the one place that handles a run's failure; the entry point only turns user errors into
one-line messages.
"""
from errors import DivergedError
from sweeper.job import TrialPruned
from sweeper.records import TRIAL_STATE
from training import checkpoint


class RunContext:
    def __init__(self, tracker, report, trial=None, resumed=None, checkpoint_path=None,
                 keep_checkpoint=False, system_metrics=False):
        self.tracker, self.count, self.trial = tracker, report, trial
        self.resumed, self.checkpoint_path, self.keep_checkpoint = resumed, checkpoint_path, keep_checkpoint
        self.system_metrics = system_metrics
        self.run_id = None

    def __enter__(self):
        resumed = self.resumed
        trial = self.trial
        self.run_id = self.tracker.start(
            self.count, run_id=resumed["mlflow_run_id"] if resumed else None,
            parent_run_id=trial.parent_run_id if trial else None, trial_number=trial.number if trial else None,
            tags=getattr(trial, "tags", None), system_metrics=self.system_metrics)
        if resumed:
            try:
                self.tracker.resume(resumed["history"], resumed["epoch"])
            except BaseException as error:  # __exit__ does not run when __enter__ fails: end the run here
                self.tracker.end("FAILED", error=error)
                raise
        return self

    def report(self, value, epoch):
        """A sweep trial's validation accuracy after an epoch; raises TrialPruned when the pruner says stop."""
        if self.trial is not None:
            self.trial.report(value, epoch)

    def _tag(self, tags):
        """Tags are best effort: a store that refuses one (sqlite locked) must not keep the run RUNNING."""
        try:
            self.tracker.set_tags(tags)
        except Exception as err:
            print(f"warning: could not tag the run with {tags}: {type(err).__name__}: {err}", flush=True)

    def __exit__(self, kind, error, traceback):
        if self.trial is not None:
            self.trial.close()
        if error is None:
            if self.trial is not None:
                self._tag({TRIAL_STATE: "COMPLETE"})
            self.tracker.end("FINISHED")
            if self.checkpoint_path and not self.keep_checkpoint:
                checkpoint.remove(self.checkpoint_path)
            return False
        pruned = isinstance(error, TrialPruned)
        if self.trial is not None:
            self._tag({TRIAL_STATE: "PRUNED" if pruned else "FAIL"})
        if isinstance(error, DivergedError):
            self._tag({"diverged": "true"})
        # SystemExit inside a run: submitit's job wrapper after a SLURM preemption (it requeues the job, which
        # goes on from the checkpoint in this run), not a failure of the run.
        stopped = pruned or isinstance(error, (KeyboardInterrupt, SystemExit))
        self.tracker.end("KILLED" if stopped else "FAILED", error=error)
        if pruned and self.checkpoint_path:
            checkpoint.remove(self.checkpoint_path)
        return False  # the error goes on to the entry point (or the sweeper)
