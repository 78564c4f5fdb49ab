"""The sweep's end-of-sweep summary (best trial, plots, ready-to-run config); the MLflow parent run it logs
to is sweeper/tracking.py's Tracking.

Optional: with `hydra.sweeper.mlflow` unset (or no tracking_uri) the sweep logs nothing to MLflow and
writes only `optimization_results.yaml`, as the upstream plugin does.
"""
import logging
import os
import shlex
import sys

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from sweeper import secrets
from sweeper.records import INFEASIBLE, INVALID, LAUNCHED, OVERRIDES, REPEAT_OF
from sweeper.study import is_confirmation
from sweeper.tracking import Tracking  # noqa: F401 - importable from here as before

log = logging.getLogger(__name__)


def launched_overrides(trial):
    """The overrides a trial was launched with. Studies recorded before they were kept as a list hold one
    string: split as a shell would, keeping quotes (`a='x y'` is one override), else at spaces."""
    overrides = trial.user_attrs.get(OVERRIDES, [])
    if isinstance(overrides, str):
        try:
            return shlex.split(overrides, posix=False)
        except ValueError:
            return overrides.split()
    return list(overrides)


def run_command(overrides):
    """The command that reruns one trial alone: this script with the trial's overrides, quoted for a shell."""
    words = [f"python {os.path.basename(sys.argv[0]) or 'app.py'}"] + [shlex.quote(o) for o in overrides]
    return secrets.mask_url(" ".join(words))


def objective_names(names, directions):
    names = list(names or [])
    default = ["value"] if len(directions) == 1 else [f"value_{i}" for i in range(len(directions))]
    return [names[i] if i < len(names) else default[i] for i in range(len(directions))]


def summarize(tracking, config, study, parent, directions, names, config_loader, counts, confirmed=None):
    """Log the outcome: console lines, sweep-dir files, and (with MLflow) metrics and artifacts on the parent.
    `confirmed` (sweeper/confirm.py's Outcome): the best is its best by mean, printed with ± std, and its table."""
    trials = [t for t in study.get_trials(deepcopy=False) if not is_confirmation(t)]  # the search's proposals
    launched = [t for t in trials if t.user_attrs.get(LAUNCHED) and t.state.is_finished()]  # interrupted ones too
    states = {s.name.lower(): sum(1 for t in launched if t.state == s)
              for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    flags = [bool(t.user_attrs.get(INFEASIBLE)) for t in trials]
    half = len(flags) // 2
    share = lambda part: sum(part) / len(part) if part else 0.0  # noqa: E731
    metrics = {"trials_complete": states["complete"], "trials_pruned": states["pruned"],
               "trials_failed": states["fail"], "proposals_over_budget": sum(flags),
               "proposals_invalid": sum(1 for t in trials if t.user_attrs.get(INVALID)),
               "proposals_repeated": sum(1 for t in trials if REPEAT_OF in t.user_attrs),
               "over_budget_share_first_half": share(flags[:half]), "over_budget_share_second_half": share(flags[half:])}
    log.info(f"{len(trials)} proposals: {states['complete']} complete, {states['pruned']} pruned, {states['fail']} failed, "
             f"{metrics['proposals_over_budget']} over budget, {metrics['proposals_invalid']} invalid, "
             f"{metrics['proposals_repeated']} repeats (never launched; this run: "
             + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items()) + ")")
    out_dir = str(config.hydra.sweep.dir)
    os.makedirs(out_dir, exist_ok=True)
    names = objective_names(names, directions)
    artifacts, results, status = [], None, "FINISHED"
    complete = [t for t in launched if t.state == TrialState.COMPLETE]
    if not complete:
        log.warning("no trial completed, so there is no best trial")
        status = "FAILED"
    elif len(directions) == 1:
        pick = max if str(directions[0]).lower() == "maximize" else min
        best = pick(complete, key=lambda t: t.value)  # not study.best_trial: confirmation runs are trials too
        winner = confirmed.best if confirmed is not None else None
        if confirmed is not None:
            best = winner.trial if winner else best
            lines = confirmation_lines(confirmed, names[0])
            for line in lines:
                print(line, flush=True)
            artifacts.append(_write(out_dir, "confirmation.tsv", confirmation_tsv(confirmed)))
            if winner is None:
                log.warning("no confirmation run completed: the best is the search's best")
        results = {"name": "optuna", "best_params": best.params, "best_value": winner.mean if winner else best.value}
        metrics.update(best_value=results["best_value"], best_trial=best.number)
        if winner:
            results.update(best_value_std=winner.std, confirmed_seeds=len(winner.values), search_value=best.value)
            metrics.update(confirmed_seeds=len(winner.values), best_search_value=best.value)
            if winner.std is not None:
                metrics["best_value_std"] = winner.std
        measured = {name: best.user_attrs[name] for name in best.constraints if name in best.user_attrs}
        metrics.update({f"best_{name}": value for name, value in measured.items()})
        command = run_command(launched_overrides(best))
        artifacts.append(_write(out_dir, "best_command.txt", command + "\n"))
        artifacts.append(_write(out_dir, "best_config.yaml", _job_yaml(config_loader, config, best)))
        shown = " ".join(f"{name}={value}" for name, value in measured.items())
        confirmed_text = f" (confirmed: mean {winner.mean:.4f} {_pm(winner.std)})" if winner else ""
        log.info(f"Best trial #{best.number}: {names[0]} {best.value:.4f}{confirmed_text} {shown} | {best.params}")
        log.info(f"Reproduce it: {command}")
        if winner:
            print(f"best (confirmed over {len(winner.values)} seeds): trial #{best.number} {names[0]}={winner.mean:.4f} "
                  f"{_pm(winner.std)} (search {best.value:.4f}) | {command}", flush=True)
        else:
            print(f"best trial #{best.number}: {names[0]} {best.value:.4f} | {command}", flush=True)
    else:
        front = study.best_trials
        results = {"name": "optuna", "solutions": [{"params": t.params, "values": t.values} for t in front]}
        metrics["pareto_size"] = len(front)
        lines = ["\t".join(f"{v:.6g}" for v in t.values) + f"\t{run_command(launched_overrides(t))}"
                 for t in sorted(front, key=lambda t: t.values)]
        artifacts.append(_write(out_dir, "pareto_front.tsv", "\t".join(names + ["command"]) + "\n" + "\n".join(lines) + "\n"))
        log.info(f"Pareto front: {len(front)} trials")
        for line in lines:
            log.info(f"    {line}")
    if results is not None:
        OmegaConf.save(OmegaConf.create(results), os.path.join(out_dir, "optimization_results.yaml"))
        artifacts.append(os.path.join(out_dir, "optimization_results.yaml"))
        if tracking.enabled:
            artifacts += _plots(complete, directions, names, out_dir)
            if len(directions) == 1:
                artifacts += constraint_plots(trials, names[0], out_dir)
    if not tracking.enabled:
        return
    client = tracking.client
    if results is not None and len(directions) == 1:
        for key, value in results["best_params"].items():
            client.log_param(parent, f"best.{key}", value)
        if tracking.register_as:
            registered = tracking.register_best(parent, best.number)
            if registered:
                log.info(f"Registered the best trial's model as {registered} (MLflow Model Registry)")
    for key, value in metrics.items():
        client.log_metric(parent, key, float(value))
    for path in artifacts:
        client.log_artifact(parent, path)
    client.set_terminated(parent, status=status)
    print(tracking.browse_hint(parent), flush=True)


def _pm(std):
    return f"± {std:.4f}" if std is not None else "± - (one seed)"


def confirmation_lines(confirmed, name):
    """The per-configuration table of a confirmation (sweeper/confirm.py), best search value first."""
    lines = [f"confirmation: the best {len(confirmed.rows)} configurations retrained with {confirmed.seeds} new seeds "
             f"each ({confirmed.seed_key}); mean ± std (n-1) over those seeds, the search's own run not counted",
             f"  {'trial':<7} {'search ' + name:<16} {'mean':<8} {'± std':<8} seeds (complete/planned)"]
    for row in confirmed.rows:
        mean = f"{row.mean:.4f}" if row.mean is not None else "-"
        std = f"{row.std:.4f}" if row.std is not None else "-"
        seeds = ",".join(str(s) for s in row.seeds)
        lines.append(f"  #{row.trial.number:<6} {row.trial.value:<16.4f} {mean:<8} {std:<8} {seeds} "
                     f"({len(row.values)}/{len(row.seeds)}{f', {row.failed} failed' if row.failed else ''})")
    return lines


def confirmation_tsv(confirmed):
    rows = ["trial\tsearch_value\tmean\tstd\tseeds\tcomplete\tfailed\tcommand"]
    for row in confirmed.rows:
        rows.append("\t".join(str(v) for v in (
            row.trial.number, row.trial.value, "" if row.mean is None else row.mean, "" if row.std is None else row.std,
            ",".join(str(s) for s in row.seeds), len(row.values), row.failed,
            run_command(launched_overrides(row.trial)))))
    return "\n".join(rows) + "\n"


def _job_yaml(config_loader, config, trial):
    """The trial's whole job config, resolved, with passwords masked: `python app.py --config-name ...` ready."""
    cfg = config_loader.load_sweep_config(config, launched_overrides(trial))
    job = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
           for k in cfg if k != "hydra"}
    return secrets.mask_url(OmegaConf.to_yaml(job))


def _write(out_dir, name, text):
    path = os.path.join(out_dir, name)
    with open(path, "w") as f:
        f.write(text)
    return path


# PED-ANOVA ranks a parameter by how its values in the best 10% of trials differ from all of them: from 11
# trained trials on, that top set holds two. Below it the plot says little (with 2 to 10 trials the "top" is the
# best trial alone), and `import optuna.importance` alone costs 1.3 s (it loads scikit-learn for fANOVA).
MIN_TRIALS_FOR_IMPORTANCE = 11


def _plots(complete, directions, names, out_dir):
    """Optimization history and parameter importance (or the Pareto front) of the trained trials, as PNGs."""
    import warnings

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from optuna.visualization import matplotlib as optuna_plots

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created in memory" line
    # Numbered afresh: Optuna's numbers also count proposals that never trained.
    view = optuna.create_study(directions=directions, storage=optuna.storages.InMemoryStorage())
    view.add_trials(complete)
    paths = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plots = []
        if len(directions) == 1:
            def history():
                ax = optuna_plots.plot_optimization_history(view, target_name=names[0])
                ax.set_xlabel("trained trial, in order (proposals never launched left out)")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                return ax
            plots.append(("optimization_history.png", history))
            distinct = len({tuple(sorted(t.params.items())) for t in complete})
            if len(complete) >= MIN_TRIALS_FOR_IMPORTANCE and distinct >= 2:
                plots.append(("param_importances.png", lambda: optuna_plots.plot_param_importances(
                    view, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), target_name=names[0])))
        else:
            plots.append(("pareto_front.png", lambda: optuna_plots.plot_pareto_front(view, target_names=names)))
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


def constraint_points(trials, name):
    """What the plot of the objective against constraint `name` shows: trained (measure, value), pruned
    (measure, last reported value), the measures of proposals over that budget, and the budget itself
    (measured - amount over budget, the same for every proposal; None if they disagree)."""
    rows = [t for t in trials if isinstance(t.user_attrs.get(name), (int, float)) and name in t.constraints]
    limits = {round(t.user_attrs[name] - t.constraints[name], 9) for t in rows}
    return {"trained": [(t.user_attrs[name], t.value) for t in rows if t.state == TrialState.COMPLETE],
            "pruned": [(t.user_attrs[name], t.intermediate_values[max(t.intermediate_values)]) for t in rows
                       if t.state == TrialState.PRUNED and t.intermediate_values],
            "over": [t.user_attrs[name] for t in rows if t.user_attrs.get(INFEASIBLE) and t.constraints[name] > 0],
            "limit": limits.pop() if len(limits) == 1 else None}


def constraint_plots(trials, objective, out_dir):
    """One PNG per constraint with a measured value (the project's `params`, `gflops`): the objective against
    that measure for every proposal. Trained trials are dots, pruned ones crosses at their last reported
    value, and proposals over that budget (never trained, so no value) triangles along the bottom, beyond a
    dashed vertical line at the budget."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    paths = []
    names = sorted({name for t in trials for name in t.constraints if isinstance(t.user_attrs.get(name), (int, float))})
    for name in names:
        points = constraint_points(trials, name)
        trained, pruned, over = points["trained"], points["pruned"], points["over"]
        if not (trained or pruned):
            continue
        try:
            figure, ax = plt.subplots(figsize=(8, 5))
            values = [v for _, v in trained + pruned]
            low = min(values) - 0.05 * (max(values) - min(values) or 1)
            if trained:
                ax.scatter(*zip(*trained), color="tab:blue", label=f"trained ({len(trained)})", zorder=3)
            if pruned:
                ax.scatter(*zip(*pruned), color="tab:orange", marker="x", label=f"pruned ({len(pruned)}), last reported",
                           zorder=3)
            if over:
                ax.scatter(over, [low] * len(over), color="tab:red", marker="^", alpha=0.7,
                           label=f"over budget, never trained ({len(over)})", zorder=2)
            if points["limit"] is not None:
                ax.axvline(points["limit"], color="tab:red", linestyle="--", label=f"budget {points['limit']:,.6g}")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.6g}"))
            ax.set_xlabel(f"{name} (measured before launch)")
            ax.set_ylabel(objective)
            ax.set_title(f"{objective} against {name}, every proposal")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            figure.tight_layout()
            path = os.path.join(out_dir, f"{objective}_vs_{name}.png")
            figure.savefig(path, dpi=100)
            plt.close(figure)
            paths.append(path)
        except Exception as err:  # a plot is a nicety; never lose a finished sweep over it
            log.warning(f"could not draw {objective} against {name}: {err}")
    return paths
