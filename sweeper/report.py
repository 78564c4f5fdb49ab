"""The sweep's MLflow parent run and its end-of-sweep summary (best trial, plots, ready-to-run config)."""
import logging
import os

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from training.tracking import open_store

log = logging.getLogger(__name__)
IDENTITY_KEYS = ("sweep.",)


def client_for(config):
    from mlflow import MlflowClient
    return MlflowClient(str(config.mlflow.tracking_uri))


def parent_run(config, study):
    """The study's one parent run: created by the first worker, reused by re-runs and other workers.

    Uses the client API, not mlflow.start_run, so in-process trials can open their own runs.
    """
    experiment_id = open_store(config.mlflow.tracking_uri, config.mlflow.experiment)  # creates the DB once
    client = client_for(config)
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if run_id:
        if is_active_run(client, run_id):
            client.update_run(run_id, status="RUNNING")
            return run_id
        log.warning(f"The study's MLflow parent run {run_id} is not in {config.mlflow.tracking_uri} (deleted, or "
                    f"the study was begun with another tracking URI): this sweep's runs go under a new parent run.")
    run = client.create_run(experiment_id, run_name=f"sweep-{study.study_name}",
                            tags={"sweep": "parent", "study_name": study.study_name})
    study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
    # Two workers starting together may both create one; the study keeps the last, and both use it.
    stored = optuna.load_study(study_name=study.study_name, storage=study._storage).user_attrs["mlflow_parent_run_id"]
    if stored != run.info.run_id:
        client.delete_run(run.info.run_id)
    return stored


def is_active_run(client, run_id):
    from mlflow.exceptions import MlflowException
    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


def finish_parent(config, run_id, status="FINISHED"):
    client_for(config).set_terminated(run_id, status=status)


def close_interrupted(config, study, parent):
    """Child runs that a killed sweep left RUNNING, whose trials are now FAIL (no heartbeat), end as KILLED."""
    failed = {str(t.number) for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
              if t.user_attrs.get("launched") and "fail_reason" not in t.user_attrs}
    if not failed:
        return
    client = client_for(config)
    experiment_id = client.get_run(parent).info.experiment_id
    for run in client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}' "
                                                   f"and attributes.status = 'RUNNING'", max_results=10_000):
        if run.data.tags.get("trial_number") in failed:
            client.set_tag(run.info.run_id, "trial_state", "FAIL")
            client.set_tag(run.info.run_id, "error", "interrupted: its sweep was killed during this trial")
            client.set_terminated(run.info.run_id, status="KILLED")


def infeasible_shares(study):
    """Share of over-budget proposals in the first and second half of the study, by proposal order."""
    flags = [bool(t.user_attrs.get("infeasible")) for t in study.get_trials(deepcopy=False)]
    half = len(flags) // 2
    share = lambda part: sum(part) / len(part) if part else 0.0  # noqa: E731
    return share(flags[:half]), share(flags[half:])


def run_command(overrides):
    kept = [o for o in overrides.split() if not o.startswith(IDENTITY_KEYS)]
    return "python train.py " + " ".join(kept)


def summarize(config, study, parent, directions, infeasible_this_run, config_loader):
    client = client_for(config)
    trials = study.get_trials(deepcopy=False)
    states = {state.name.lower(): sum(1 for t in trials if t.state == state and t.user_attrs.get("launched"))
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    n_infeasible = sum(1 for t in trials if t.user_attrs.get("infeasible"))
    first, second = infeasible_shares(study)
    metrics = {"trials_complete": states["complete"], "trials_pruned": states["pruned"],
               "trials_failed": states["fail"], "proposals_over_budget": n_infeasible,
               "over_budget_share_first_half": first, "over_budget_share_second_half": second}
    log.info(f"{len(trials)} proposals: {states['complete']} complete, {states['pruned']} pruned, "
             f"{states['fail']} failed, {n_infeasible} over budget (never launched; share "
             f"{100 * first:.0f}% in the first half, {100 * second:.0f}% in the second)")
    out_dir = str(config.hydra.sweep.dir)
    os.makedirs(out_dir, exist_ok=True)
    artifacts = []
    if len(directions) == 1:
        try:
            best = study.best_trial
        except ValueError:
            log.warning("no trial completed, so there is no best trial")
            for key, value in metrics.items():
                client.log_metric(parent, key, value)
            client.set_terminated(parent, status="FAILED")
            return
        results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
        metrics.update(best_value=best.value, best_trial=best.number,
                       best_num_params=best.user_attrs.get("num_params", -1))
        for key, value in best.params.items():
            client.log_param(parent, f"best.{key}", value)
        command = run_command(best.user_attrs.get("overrides", ""))
        artifacts.append(_write(out_dir, "best_command.txt", command + "\n"))
        best_cfg = config_loader.load_sweep_config(config, [o for o in best.user_attrs["overrides"].split()])
        job_keys = [k for k in best_cfg if k not in ("hydra", "sweep")]
        with open(os.path.join(out_dir, "best_config.yaml"), "w") as f:
            f.write(OmegaConf.to_yaml({k: OmegaConf.to_container(best_cfg[k], resolve=True)
                                       if OmegaConf.is_config(best_cfg[k]) else best_cfg[k] for k in job_keys}))
        artifacts.append(os.path.join(out_dir, "best_config.yaml"))
        log.info(f"Best trial #{best.number}: value {best.value:.4f}, {best.user_attrs.get('num_params'):,} "
                 f"parameters, params {best.params}")
        log.info(f"Reproduce it: {command}")
        print(f"best trial #{best.number}: val_acc {best.value:.4f} | {command}", flush=True)
    else:
        front = study.best_trials
        results = {"name": "optuna", "solutions": [{"params": t.params, "values": t.values} for t in front]}
        metrics["pareto_size"] = len(front)
        lines = [f"{t.values[0]:.4f}\t{int(t.values[1])}\t{run_command(t.user_attrs.get('overrides', ''))}"
                 for t in sorted(front, key=lambda t: t.values[1])]
        artifacts.append(_write(out_dir, "pareto_front.tsv", "val_acc\tnum_params\tcommand\n" + "\n".join(lines) + "\n"))
        log.info(f"Pareto front: {len(front)} trials")
        for line in lines:
            log.info(f"    {line}")
    OmegaConf.save(OmegaConf.create(results), os.path.join(out_dir, "optimization_results.yaml"))
    artifacts.append(os.path.join(out_dir, "optimization_results.yaml"))
    artifacts += _plots(study, directions, out_dir)
    for key, value in metrics.items():
        client.log_metric(parent, key, float(value))
    for path in artifacts:
        client.log_artifact(parent, path)
    client.set_terminated(parent, status="FINISHED")


def _write(out_dir, name, text):
    path = os.path.join(out_dir, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def _plots(study, directions, out_dir):
    """Optimization history and parameter importance (or the Pareto front) as PNGs."""
    import warnings

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    trained = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
               if not t.user_attrs.get("infeasible")]
    # Plot only trials that trained: over-budget proposals carry a placeholder value.
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created in memory" line
    view = optuna.create_study(directions=directions, storage=optuna.storages.InMemoryStorage())
    view.add_trials(trained)
    paths = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plots = []
        if len(directions) == 1:
            plots.append(("optimization_history.png", lambda: history_plot(view)))
            if len(trained) >= 2 and len({tuple(sorted(t.params.items())) for t in trained}) >= 2:
                plots.append(("param_importances.png", lambda: optuna_plots.plot_param_importances(
                    view, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), target_name="val_acc")))
        else:
            plots.append(("pareto_front.png", lambda: optuna_plots.plot_pareto_front(
                view, target_names=["val_acc", "num_params"])))
        for name, make in plots:
            try:
                ax = make()
                figure = ax.figure if hasattr(ax, "figure") else ax[0].figure
                figure.set_size_inches(8, 5)
                figure.tight_layout()
                figure.savefig(os.path.join(out_dir, name), dpi=100)
                plt.close(figure)
                paths.append(os.path.join(out_dir, name))
            except Exception as err:  # a plot is a nicety; never lose a finished sweep over it
                log.warning(f"could not draw {name}: {err}")
    return paths


def history_plot(view):
    from matplotlib.ticker import MaxNLocator
    from optuna.visualization import matplotlib as optuna_plots
    ax = optuna_plots.plot_optimization_history(view, target_name="val_acc")
    # The view holds the trained trials only, numbered afresh; Optuna's numbers also count skipped proposals.
    ax.set_xlabel("trained trial, in order (over-budget proposals left out)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return ax
