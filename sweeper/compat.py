"""Every private name of Hydra, the Optuna sweeper plugin and Optuna that this package uses, in one place.

- `hydra_plugins.hydra_optuna_sweeper._impl.create_optuna_distribution_from_override` (plugin, private
  module): turns one parsed override (`choice(...)`, `range(...)`, `interval(...)`, `tag(log, ...)`) into an
  Optuna distribution, so the search-space grammar is exactly the plugin's. There is no public equivalent.
- `optuna.Study._get_trials` (Optuna, private method): samplers read a study's trials through it (TPE,
  GP, NSGA-II, CMA-ES, QMC all call it, with `use_cache=True`). `StudyView` overrides it so that a
  learning sampler sees over-budget placeholders as finished trials with their constraint values, while
  the study itself keeps them as FAIL for pruners and for every other reader (see sweeper/sampler.py).
- `optuna.storages._rdb.models` (TrialModel, TrialHeartbeatModel) and
  `optuna.storages._rdb.storage._create_scoped_session` (Optuna, private module): which RUNNING trials have
  no heartbeat row at all. `fail_stale_trials` skips them (it compares heartbeat rows only), so a worker
  killed between creating its trial and its first heartbeat would leave a trial that is never failed.
- the same two, and `StudyUserAttributeModel`: `swap_study_user_attr`, a compare-and-set of a study user attr
  that the database makes atomic (its unique key on study and attr; an UPDATE ... WHERE value = expected).
  `Study.set_user_attr` is an upsert, so two workers that each read "absent" and write both "win". On a
  JournalStorage the swap needs no private name: it holds Optuna's public `JournalFileOpenLock` on
  `<journal>.swap` (the file `<journal>.swap.lock`) around re-read, compare and write.

Everything else is public API: `Trial.suggest_float` / `suggest_int` / `suggest_categorical` with a
distribution's own fields (sweeper/space.py: suggest) instead of `Trial._suggest`;
trial ids from `storage.get_study_id_from_name` and `storage.get_trial_id_from_study_id_trial_number`
instead of `Trial._trial_id`; the sweeper keeps its own storage object instead of reading `Study._storage`;
`optuna.storages.fail_stale_trials`, `RDBStorage.record_heartbeat`, `GridSampler.is_exhausted`,
`Study.enqueue_trial`; and Hydra's launcher helpers `hydra.core.utils.run_job` / `setup_globals` and
`hydra.core.singleton.Singleton.get_state` / `set_state`, which Hydra's own launchers (basic, joblib)
use the same way.
- The module paths of Hydra's launchers (basic, joblib, submitit), as names of the loggers that print each
  job's launch line (`LAUNCHER_LOGGERS`): sweeper/display.py rewrites those lines so that they name the trial.
  Only the names are used, nothing is imported; a launcher not listed keeps its own lines.
"""
import copy

import optuna
from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

__all__ = ["LAUNCHER_LOGGERS", "StudyView", "distribution_from_override", "running_without_heartbeat",
           "swap_study_user_attr"]

LAUNCHER_LOGGERS = ("hydra._internal.core_plugins.basic_launcher", "hydra_plugins.hydra_joblib_launcher._core",
                    "hydra_plugins.hydra_submitit_launcher.submitit_launcher")


def distribution_from_override(override):
    """A parsed sweep override -> an Optuna distribution (the plugin's grammar); a plain value -> its string."""
    return create_optuna_distribution_from_override(override)


class StudyView(optuna.Study):
    """The same study (storage, id, directions, sampler), with the trials a sampler reads rewritten.

    `rewrite(trials) -> trials` is applied to what `_get_trials` returns; `get_trials` and `trials`
    go through it too, so a sampler sees one consistent history whichever accessor it uses.
    """

    def __init__(self, study, rewrite):  # noqa: D107 - shares the study's state, creates nothing
        self.__dict__.update(study.__dict__)
        self._rewrite = rewrite

    def _get_trials(self, deepcopy=True, states=None, use_cache=False):
        trials = self._rewrite(super()._get_trials(deepcopy=False, states=None, use_cache=use_cache))
        if states is not None:
            trials = [t for t in trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials


def running_without_heartbeat(storage, study_id):
    """Ids of the study's RUNNING trials that have never recorded a heartbeat (an RDBStorage's)."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    with _create_scoped_session(storage.scoped_session) as session:
        rows = (session.query(models.TrialModel.trial_id)
                .outerjoin(models.TrialHeartbeatModel, models.TrialHeartbeatModel.trial_id == models.TrialModel.trial_id)
                .filter(models.TrialModel.study_id == study_id, models.TrialModel.state == optuna.trial.TrialState.RUNNING,
                        models.TrialHeartbeatModel.trial_heartbeat_id.is_(None))
                .all())
    return {row[0] for row in rows}


def swap_study_user_attr(storage, study_id, key, expected, value):
    """Set study user attr `key` to `value` only if it holds `expected` now (None: it is absent), atomically
    for every process on an RDBStorage or a journal; returns what the attr holds afterwards (`value` when this
    call won).

    A database makes it atomic (the attr table's unique key; an UPDATE ... WHERE value = expected). A journal
    (sweeper/stores.py: open_storage) has no such key: the swap holds an exclusive lock file beside it,
    `<journal>.swap.lock` (Optuna's JournalFileOpenLock: O_EXCL, NFSv3 and later; one left by a killed process
    is broken after 30 s), while it re-reads the attr (JournalStorage replays the file's new entries on every
    read, so it sees other processes' writes), compares and appends. Every swap on that journal takes the same
    lock, so no other swap writes between this one's read and its write. Not the backend's own lock, which the
    append takes. In this process's memory, this process is the only writer: read, then write."""
    if isinstance(storage, optuna.storages.JournalStorage):
        from optuna.storages.journal import JournalFileOpenLock

        from sweeper.stores import journal_file
        path = journal_file(storage)
        if path is None:
            raise ValueError("swap_study_user_attr: a JournalStorage that sweeper.stores.open_storage did not open "
                             "(its file, and so its lock, is unknown)")
        lock = JournalFileOpenLock(path + ".swap")
        lock.acquire()
        try:
            held = storage.get_study_user_attrs(study_id).get(key)
            if held == expected:
                storage.set_study_user_attr(study_id, key, value)
                held = value
        finally:
            lock.release()
        return held
    if not isinstance(storage, optuna.storages.RDBStorage):  # in memory: this process is the only writer
        if storage.get_study_user_attrs(study_id).get(key) == expected:
            storage.set_study_user_attr(study_id, key, value)
        return storage.get_study_user_attrs(study_id).get(key)
    import json

    import sqlalchemy.exc
    from optuna.storages._rdb import models
    session = storage.scoped_session()
    try:
        if expected is None:  # a second insert of (study, key) breaks the table's unique key: this call lost
            session.add(models.StudyUserAttributeModel(study_id=study_id, key=key, value_json=json.dumps(value)))
        else:
            (session.query(models.StudyUserAttributeModel)
             .filter_by(study_id=study_id, key=key, value_json=json.dumps(expected))
             .update({"value_json": json.dumps(value)}, synchronize_session=False))
        session.commit()
    except sqlalchemy.exc.IntegrityError:
        session.rollback()
    finally:
        session.close()
    return storage.get_study_user_attrs(study_id).get(key)
