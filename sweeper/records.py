"""The keys of a sweep trial's record, each named once: Optuna user attrs (of a trial, or of the study),
system attrs, and the MLflow run tags the sweeper and the job's tracker set or read for trials.

The values are what existing studies and MLflow stores hold: never change one (tests/ check the stored
format with the bare strings). This module imports nothing, so any module (sweeper/, training/, scripts/)
can import it.
"""

# --- a trial's user attrs (Optuna) ------------------------------------------------------------------------------
LAUNCHED = "launched"  # True once the job is launched; set by the sweeper (propose.py: mark_launched)
OVERRIDES = "overrides"  # the job's overrides, a list (an older study: one string); set by the sweeper at launch
CONFIG_DIGEST = "config_digest"  # what the config builds and trains (reduce.py); set by the sweeper at launch
FAIL_REASON = "fail_reason"  # why the job failed (crashed, diverged, no number); set by the sweeper from its result
INFEASIBLE = "infeasible"  # True: over budget, never launched (a placeholder); set by the sweeper's Proposer
INVALID = "invalid"  # True: a constraint refused the config, or it did not compose; set by the Proposer
REASON = "reason"  # why the Proposer refused it ("over budget: ..." or the constraint's words); set with the two above
REPEAT_OF = "repeat_of"  # the number of the trial this proposal repeats (never launched); set by the Proposer
CONCURRENT = "concurrent"  # True: that repeat was another worker's proposal of the same moment; set by the Proposer
WITHDRAWN = "withdrawn"  # True: gave way to another worker (last free slot, same replacement); set by the sweeper
INTERRUPTED = "interrupted"  # True: Ctrl-C or SIGTERM stopped the sweep during it; set by the sweeper (close_held)
CHECKPOINT = "checkpoint"  # the job's checkpoint file; set by the job (sweeper/job.py: SweepTrial.record)
MLFLOW_RUN_ID = "mlflow_run_id"  # the job's MLflow run; set by the job (SweepTrial.record)
RESUMES = "resumes"  # the number of the interrupted trial it goes on from; set by the sweeper (resume.py)
PRUNED_AT_STEP = "pruned_at_step"  # the step the pruner stopped it at; set by the job (SweepTrial.report)
BASELINE = "baseline"  # True: an enqueued baseline (hydra.sweeper.enqueue); set by the sweeper (starts.py)
WARM_START_FROM = "warm_start_from"  # `<study>#<number>` of a trial copied by warm_start; set by the sweeper
CONFIRM_OF = "confirm_of"  # the search trial a confirmation run retrains; set by the sweeper (confirm.py)
SEED = "seed"  # the seed a confirmation run retrains with; set by the sweeper (confirm.py)

# --- the study's user attrs -------------------------------------------------------------------------------------
# WARM_START_FROM, on the study: the name of the study its trials were copied from (starts.py).
MLFLOW_PARENT_RUN_ID = "mlflow_parent_run_id"  # the study's MLflow parent run; set by the sweeper (tracking.py)

# --- a trial's system attrs (Optuna) ----------------------------------------------------------------------------
# CONFIG_DIGEST too: set by the sweeper before judging, so that another worker's twin check sees it.
HEARTBEAT = "sweeper:heartbeat"  # in a journal: the beating worker's wall-clock time; set by the sweeper (study.py)

# --- MLflow run tags --------------------------------------------------------------------------------------------
# BASELINE ("true"), CONFIRM_OF and SEED are tags of a trial's job run too, with the same names as the attrs.
PARENT_RUN = "mlflow.parentRunId"  # MLflow's own: the run a run is nested under; set by the job and the sweeper
TRIAL_NUMBER = "trial_number"  # on a trial's job run: its trial's number; set by the job (training/tracking.py)
TRIAL_STATE = "trial_state"  # COMPLETE, PRUNED or FAIL; set by the job (run_context.py), or the sweeper for a dead job
ERROR = "error"  # the error that ended the run; set by the job (training/tracking.py), or the sweeper for a dead job
MODEL_URI = "model_uri"  # the job run's logged model; set by the job (training/tracking.py), read by register_best
SWEEP = "sweep"  # "parent" (the sweep's parent run) or "confirm" (a confirmed configuration's run); set by the sweeper
STUDY_NAME = "study_name"  # on the parent run: its study; set by the sweeper (tracking.py)
REGISTERED_MODEL = "registered_model"  # on the parent run: `<name>/<version>` of the best's model; set by the sweeper
SEEDS = "seeds"  # on a confirmed configuration's run: its seeds, comma-separated; set by the sweeper (confirm.py)
