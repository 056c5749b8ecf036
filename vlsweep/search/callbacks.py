"""What the sweep's driver shows and records while Ray Tune runs: the progress line, Ray
Tune's logger callbacks for the trials' curves, and ``Events`` (Ray's error text onto
failed trials, the driver's heartbeat, the progress line every few seconds).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from ray.tune import Callback

from vlsweep import outcomes
from vlsweep.search import failures, lease
from vlsweep.search.backend import waiting_reason
from vlsweep.search.config import SweepConfig, check_loggers
from vlsweep.search.searcher import OptunaAskTellSearcher
from vlsweep.search.worker import CHECKPOINT_KEY

Log = Callable[[str], None]
_log = logging.getLogger("vlsweep")
# A progress line every 10 s while trials run, and when a trial finishes unless one was
# printed in the last 2 s (short trials would otherwise flood the terminal, and each line
# reads the whole study).
PROGRESS_EVERY_SECONDS = 10.0
PROGRESS_MIN_SECONDS = 2.0


def progress_line(
    study: optuna.Study,
    names: list[str],
    started: float,
    total: int,
    tune_trials: list[Any] | None = None,
    waiting: str = "",
    held: list[int] | None = None,
) -> str:
    """One line of sweep progress: the time since ``started``, then ``progress_state``."""
    return elapsed(started) + progress_state(study, names, total, tune_trials, waiting, held)


def progress_state(
    study: optuna.Study,
    names: list[str],
    total: int,
    tune_trials: list[Any] | None = None,
    waiting: str = "",
    held: list[int] | None = None,
) -> str:
    """Where the sweep stands. Finished trials come from the study; running and pending
    ones from Ray Tune (``tune_trials``) when given: an Optuna trial is RUNNING from the
    moment it is asked for, while Ray may still be waiting for resources to start it."""
    trials = study.get_trials(deepcopy=False)  # one read of the study per line
    c = outcomes.counts(trials)
    done = outcomes.finished_toward_trials(trials)
    front = outcomes.pareto_front(study, trials)
    shown = ", ".join(
        "#{} {}".format(
            t.number, " ".join(f"{n}={outcomes.fmt(v)}" for n, v in zip(names, t.values, strict=True))
        )
        for t in front[:4]
    )
    if tune_trials is None:
        active = f"{c['RUNNING']} running"
    else:
        running = sum(t.status == "RUNNING" for t in tune_trials)
        pending = sum(t.status == "PENDING" for t in tune_trials)
        active = f"{running} running, {pending} pending" + (f" ({waiting})" if pending and waiting else "")
    if held:  # search.reproducible: a free slot waits until these trials have ended
        active += f", 1 slot held (search.reproducible: trial {held[0]} must end first)"
    return (
        f"{done}/{total} trials done: "
        f"{c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed, {active}"
        + (f" | front: {shown}" + (" ..." if len(front) > 4 else "") if front else "")
    )


def elapsed(started: float) -> str:
    """A progress line's prefix: the time since the sweep started, ``[MM:SS] ``."""
    el = time.time() - started
    return f"[{int(el // 60):02d}:{int(el % 60):02d}] "


def trial_name(trial: Any) -> str:
    """Ray trial names and directories say which Optuna trial they ran."""
    return f"trial-{int(trial.config.get('optuna_trial', -1)):04d}-{trial.trial_id}"


def logger_callbacks(cfg: SweepConfig) -> list[Callback]:
    """Ray Tune's own logger callbacks for the trials' training curves, as the config asks."""
    check_loggers(cfg)
    out: list[Callback] = []
    if cfg.logging.tensorboard:
        from ray.tune.logger import TBXLoggerCallback

        out.append(TBXLoggerCallback())
    if cfg.logging.mlflow is not None:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        out.append(
            MLflowLoggerCallback(
                tracking_uri=cfg.logging.mlflow.tracking_uri,
                experiment_name=cfg.logging.mlflow.experiment_name or cfg.name,
            )
        )
    if cfg.logging.wandb is not None:
        from ray.air.integrations.wandb import WandbLoggerCallback

        out.append(
            WandbLoggerCallback(project=cfg.logging.wandb.project or cfg.name, group=cfg.logging.wandb.group)
        )
    return out


class Events(Callback):
    """Driver-side hooks: Ray's error text onto failed trials, heartbeat, progress lines."""

    def __init__(
        self,
        searcher: OptunaAskTellSearcher,
        study: optuna.Study,
        driver: str,
        names: list[str],
        started: float,
        total: int,
        log: Log,
        *,
        request: dict[str, float] | None = None,
        scaling: bool = False,
        workers: int = 1,
        retries: int = 1,
        node_loss_retries: int = 3,
    ):
        self.searcher, self.study, self.driver, self.names = searcher, study, driver, names
        self.started, self.total, self.log = started, total, log
        # What each trial asks Ray for, and whether an autoscaler may add nodes: what the
        # progress line says a pending trial waits for.
        self.request, self.scaling, self.workers = request or {}, scaling, workers
        self.last = 0.0
        self.last_state = ""  # what the last progress line said, without its time
        self.ledger = failures.Ledger(retries, node_loss_retries)
        self.registered: dict[str, int] = {}  # each trial's last checkpoint Tune registered
        self.tune_trials: list[Any] | None = None

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Where Tune's loggers write this trial's curves (TensorBoard event files).
        self.searcher.note(trial.trial_id, "log_dir", str(trial.path))

    # Tune pickles its callbacks into tuner.pkl; a study would carry its storage URL, and
    # with it any password. Nothing here is needed to restore a sweep (the study is).
    def __getstate__(self) -> dict[str, Any]:
        return {"names": self.names, "total": self.total}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _failed(self, trial: Any) -> tuple[str, Any]:
        """A trial whose Ray worker failed: its class (``failures``), counted and recorded.
        Nothing here may stop the sweep: a failure that cannot be classed is a worker death."""
        err: Any = None
        try:
            err = _error_of(trial)
            kind, what = failures.cause(
                err,
                self.searcher.nodes(trial.trial_id),
                waiting=lambda: lease.heartbeat(self.study, self.driver),
            )
        except Exception as exc:  # Ray's state unreadable for a moment, an odd error file
            _log.warning("could not tell why trial %s failed: %s", trial.trial_id, exc)
            kind, what = failures.WORKER_DEATH, "unknown"
        count = self.ledger.add(trial.trial_id, kind)
        self.searcher.note(trial.trial_id, failures.COUNT_ATTR[kind], count)
        self.searcher.note(trial.trial_id, "last_failure", f"{kind} ({what}): {failures.error_line(err)}")
        return kind, err

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        # Tune has registered it: a run again of the trial continues from this step.
        step = (trial.last_result or {}).get(CHECKPOINT_KEY)
        if step:
            self.registered[trial.trial_id] = int(step)
            self.searcher.note(trial.trial_id, "checkpoint_step", int(step))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Ray runs the trial again, as the same Optuna trial, unless its class is over its cap.
        kind, err = self._failed(trial)
        number = trial.config.get("optuna_trial")
        if self.ledger.over(trial.trial_id, kind):
            # Tune's own limit is both caps together: this class's is spent. The trial is
            # FAIL now and its run again is stopped at its first report (StopRequests).
            reason = self.ledger.reason(trial.trial_id, kind, failures.error_line(err))
            self.searcher.fail(trial.trial_id, f"the Ray worker failed: {reason}")
            self.log(f"trial {number}: {kind}, more than {failures.CAP_KEY[kind]} allows; it failed")
            return
        self.searcher.recovering(trial.trial_id)
        what = "its node was lost" if kind == failures.NODE_LOSS else "its Ray worker died"
        step = self.registered.get(trial.trial_id)
        where = f"from its checkpoint at step {step}" if step else "from step 0"
        self.log(f"trial {number}: {what} ({kind}); running it again {where}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Tune gives up on the trial (its own limit, both caps together, is reached).
        kind, err = self._failed(trial)
        detail = failures.error_line(err) if err is not None else "(no message)"
        if self.ledger.over(trial.trial_id, kind):
            message = f"the Ray worker failed: {self.ledger.reason(trial.trial_id, kind, detail)}"
        else:
            message = f"the Ray worker failed: {kind}: {detail}"
        self.searcher.fail(trial.trial_id, message)
        self.registered.pop(trial.trial_id, None)
        _drop_checkpoint(trial)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tune_trials = trials
        self.registered.pop(trial.trial_id, None)
        _drop_checkpoint(trial)
        self._tick(force=True)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.tune_trials = trials
        self._tick()

    def _tick(self, force: bool = False) -> None:
        now = time.time()
        if now - self.last >= (PROGRESS_MIN_SECONDS if force else PROGRESS_EVERY_SECONDS):
            self.last = now
            lease.heartbeat(self.study, self.driver)
            trials = self.tune_trials or []
            pending = any(t.status == "PENDING" for t in trials)
            active = sum(t.status in ("PENDING", "RUNNING") for t in trials)
            waiting = waiting_reason(self.request, self.scaling, active, self.workers) if pending else ""
            self.last_state = progress_state(
                self.study, self.names, self.total, self.tune_trials, waiting, self.searcher.holding
            )
            self.log(elapsed(self.started) + self.last_state)

    def final_line(self) -> None:
        """The sweep's last progress line, unless the last one printed said the same."""
        state = progress_state(self.study, self.names, self.total, self.tune_trials)
        if state != self.last_state:
            self.log(elapsed(self.started) + state)


def _drop_checkpoint(trial: Any) -> None:
    """A finished trial's checkpoint is of no more use: removed from Ray's storage (a
    local directory or object storage) so that a long sweep does not pile them up."""
    checkpoint = getattr(trial, "checkpoint", None)
    if checkpoint is None:
        return
    try:
        checkpoint.filesystem.delete_dir(checkpoint.path)
    except (FileNotFoundError, OSError) as err:  # already gone, or storage unreachable now
        _log.debug("could not remove %s: %s", checkpoint.path, err)


def _error_of(trial: Any) -> Any:
    """The error the trial's worker last failed with: the exception Tune pickled on this
    machine (Ray's own marks on it, such as an actor's ``preempted``, intact) when it is
    the last failure's, else the last failure's text. Tune's ``get_error`` reads
    ray.storage_path, where object storage has it only once synced."""
    import pickle

    text_path = Path(getattr(trial, "error_file", None) or "/nonexistent")
    pickled = Path(getattr(trial, "pickled_error_file", None) or "/nonexistent")
    # Tune rewrites the pickle only for Ray's own errors and appends each failure to the
    # text: a pickle older than the text's last write is an earlier failure's.
    if pickled.is_file() and (
        not text_path.is_file() or pickled.stat().st_mtime >= text_path.stat().st_mtime - 1
    ):
        try:
            with pickled.open("rb") as f:
                return pickle.load(f)
        except Exception as err:  # not loadable here: the text below
            _log.debug("could not read %s: %s", pickled, err)
    if text_path.is_file():
        text = text_path.read_text()
        return text.rsplit("Failure #", 1)[-1] if "Failure #" in text else text
    return trial.get_error()
