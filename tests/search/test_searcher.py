"""The searcher's bookkeeping against a real Optuna study (Ray Tune drives it in test_sweep.py)."""

import math
import pickle

import optuna
import pytest
from optuna.trial import TrialState

from vlsweep.search.searcher import OptunaAskTellSearcher
from vlsweep.spaces import parse_space


def _searcher(tmp_path, **kwargs) -> OptunaAskTellSearcher:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="t", storage=storage, directions=["minimize", "maximize"])
    study.set_metric_names(["cer", "iou"])
    space, _ = parse_space(None)
    return OptunaAskTellSearcher(
        study,
        space,
        {"lora.vision": False, "lora.projector": "full"},
        ["cer", "iou"],
        100,
        constraints=[("cer", "<=", 0.5)],
        **kwargs,
    )


@pytest.fixture
def searcher(tmp_path):
    return _searcher(tmp_path)


def _only(s):
    (t,) = s.study.get_trials()
    return t


def test_complete_with_values_user_attrs_and_constraint(searcher):
    cfg = searcher.suggest("ray_a")
    assert cfg["optuna_trial"] == 0 and "lr_llm" in cfg["params"]
    assert _only(searcher).user_attrs["ray_trial_id"] == "ray_a"
    searcher.on_trial_result("ray_a", {"steps": 50, "cer": 0.9, "iou": 0.1})
    searcher.on_trial_complete("ray_a", {"steps": 100, "cer": 0.3, "iou": 0.4, "train_seconds": 2.0})
    t = _only(searcher)
    assert t.state == TrialState.COMPLETE and t.values == [0.3, 0.4]
    assert t.user_attrs["steps"] == 100 and t.user_attrs["train_seconds"] == 2.0
    assert t.constraints == {"cer <= 0.5": pytest.approx(-0.2)}


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        ({"steps": 100, "cer": math.nan, "iou": 0.4}, "metric 'cer' is nan"),
        ({"steps": 100, "cer": 0.2, "iou": math.inf}, "metric 'iou' is inf"),
        ({"steps": 100, "cer": 0.2}, "metric 'iou' is missing"),
        (
            {"steps": 3, "vlsweep_error": "FloatingPointError: training loss is nan at step 3"},
            "training loss is nan",
        ),
        (None, "without reporting any result"),
    ],
)
def test_bad_results_fail_with_the_reason(searcher, result, reason):
    searcher.suggest("r")
    searcher.on_trial_complete("r", result)
    t = _only(searcher)
    assert t.state == TrialState.FAIL
    assert reason in t.user_attrs["error"]


def test_scheduler_stopped_trial_is_pruned_with_steps(searcher):
    searcher.suggest("r")
    searcher.on_trial_result("r", {"steps": 25, "cer": 0.1, "iou": 0.9})
    searcher.on_trial_complete("r", {"steps": 25, "cer": 0.1, "iou": 0.9})
    t = _only(searcher)
    assert t.state == TrialState.PRUNED and t.user_attrs["steps"] == 25
    assert searcher.study.best_trials == []


def test_a_trial_records_its_objectives_at_each_rung_it_reaches(tmp_path):
    s = _searcher(tmp_path, rungs=[10, 30])
    s.suggest("r")
    s.on_trial_result("r", {"steps": 10})  # a training-curve row at a rung: no objectives
    s.on_trial_result("r", {"steps": 10, "cer": 0.4, "iou": 0.2})
    s.on_trial_result("r", {"steps": 20, "cer": 0.3, "iou": 0.3})  # not a rung
    s.on_trial_result("r", {"steps": 30, "cer": float("nan"), "iou": 0.3})  # not finite: not recorded
    s.on_trial_complete("r", {"steps": 30, "cer": float("nan"), "iou": 0.3})
    assert _only(s).user_attrs["rungs"] == {"10": [0.4, 0.2]}
    # A trial the scheduler stops at a rung: Tune hands that result to on_trial_complete only.
    s.suggest("q")
    s.on_trial_result("q", {"steps": 10, "cer": 0.5, "iou": 0.1})
    s.on_trial_complete("q", {"steps": 30, "cer": 0.45, "iou": 0.15})
    q = s.study.get_trials()[1]
    assert q.state == TrialState.PRUNED
    assert q.user_attrs["rungs"] == {"10": [0.5, 0.1], "30": [0.45, 0.15]}


def test_the_sampler_sees_stopped_trials_at_the_highest_rung_with_enough_of_them():
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from vlsweep.search.sampling import at_highest_rung

    dist = {"x": FloatDistribution(0, 1), "y": FloatDistribution(0, 1)}  # d = 2: a rung needs 3

    def trial(number, state, rungs, values=None):
        t = create_trial(state=state, params={"x": 0.5, "y": 0.5}, distributions=dist, values=values)
        t.number, t.user_attrs = number, ({"rungs": rungs} if rungs else {})
        return t

    r10, r30 = {"10": [0.5, 0.1]}, {"10": [0.5, 0.1], "30": [0.4, 0.2]}
    trials = [
        trial(0, TrialState.PRUNED, r10),
        trial(1, TrialState.PRUNED, r30),
        trial(2, TrialState.COMPLETE, r30, [0.3, 0.3]),
        trial(3, TrialState.PRUNED, r30),
        trial(4, TrialState.FAIL, r30),  # crashed or re-queued after it reached rung 30: not counted
        trial(5, TrialState.RUNNING, r30),  # running: its rungs may still change: not counted
        trial(6, TrialState.COMPLETE, None, [0.1, 0.9]),  # a warm-start point: no rung values
    ]
    seen = at_highest_rung(trials, [10, 30])
    # Rung 30 has 3 stopped or finished trials: they are COMPLETE with their values there;
    # the one stopped at rung 10 stays PRUNED (worse at a lower rung), the failed and the
    # running one are as they were, and the warm-start point (another fidelity) is left out.
    assert [(t.number, t.state) for t in seen] == [
        (0, TrialState.PRUNED),
        (1, TrialState.COMPLETE),
        (2, TrialState.COMPLETE),
        (3, TrialState.COMPLETE),
        (4, TrialState.FAIL),
        (5, TrialState.RUNNING),
    ]
    assert [seen[k].values for k in (1, 2, 3)] == [[0.4, 0.2]] * 3
    assert trials[2].values == [0.3, 0.3] and trials[1].state == TrialState.PRUNED  # copies
    # Too few at rung 30: rung 10 (4 finished trials there) stands in.
    fewer = at_highest_rung(trials[:3], [10, 30])
    assert [t.values for t in fewer] == [[0.5, 0.1]] * 3
    # Enough full-budget trials: seen as they are.
    done = [trial(k, TrialState.COMPLETE, r30, [0.3, 0.3]) for k in range(3)]
    assert at_highest_rung(done + trials, [10, 30]) == done + trials
    # No rung with enough trials: as they are (TPE's own start-up decides).
    assert at_highest_rung(trials[:2], [10, 30]) == trials[:2]


def test_tpe_learns_from_the_rungs_where_it_learned_nothing_from_pruned_trials():
    """Every trial stopped at the first rung: told only PRUNED, TPE proposes about as a
    random sampler does; told what the rung measured, it closes in on the good region."""
    import statistics

    from vlsweep.search.sampling import RUNG_ATTR, make_sampler

    def distance_after_startup(rungs):
        study = optuna.create_study(
            directions=["minimize", "maximize"], sampler=make_sampler("tpe", 0, rungs=rungs)
        )
        distances = []
        for _ in range(40):
            t = study.ask()
            d = abs(t.suggest_float("x", 0, 1) - 0.8)  # the good configs sit near x = 0.8
            distances.append(d)
            t.set_user_attr(RUNG_ATTR, {"10": [d, 1 - d]})
            study.tell(t, state=TrialState.PRUNED)
        return statistics.median(distances[10:])  # after TPE's 10 random start-up trials

    assert distance_after_startup([10]) < 0.12 < 0.15 < distance_after_startup([])


def test_worker_failure_gets_rays_message_and_close_leaves_nothing_running(searcher):
    searcher.suggest("a")
    searcher.suggest("b")
    searcher.suggest("c")
    searcher.on_trial_complete("a", error=True)
    searcher.fail("a", "the Ray worker failed: ActorDiedError")
    searcher.on_trial_complete("b", error=True)  # its message never arrives
    assert searcher.close("interrupted (Ctrl-C)") == [2]
    trials = searcher.study.get_trials()
    states = {t.user_attrs["ray_trial_id"]: t for t in trials if "ray_trial_id" in t.user_attrs}
    assert all(t.state == TrialState.FAIL for t in states.values())
    assert "ActorDiedError" in states["a"].user_attrs["error"]
    assert "worker failed" in states["b"].user_attrs["error"]
    # The trial that never finished is re-queued with its parameters, for `vlsweep resume`.
    assert states["c"].user_attrs["error"] == "interrupted (Ctrl-C); re-queued"
    assert states["c"].user_attrs["requeued"] is True
    (queued,) = [t for t in trials if t.state == TrialState.WAITING]
    assert queued.user_attrs["retry_of"] == 2 and queued.system_attrs["fixed_params"] == states["c"].params


def test_close_without_requeue_only_fails_what_is_open(searcher):
    searcher.suggest("a")
    assert searcher.close("stopped: search.time_budget_s (5 s) reached", requeue=False) == []
    (t,) = searcher.study.get_trials()
    assert t.state == TrialState.FAIL and t.user_attrs["error"].startswith("stopped: search.time_budget_s")
    assert "requeued" not in t.user_attrs


def _fail_with(searcher, trial_id: str, error: str) -> None:
    searcher.suggest(trial_id)
    searcher.on_trial_result(trial_id, {"vlsweep_error": error, "steps": 3})
    searcher.on_trial_complete(trial_id, {"vlsweep_error": error, "steps": 3})


def _complete(searcher, trial_id: str) -> None:
    searcher.suggest(trial_id)
    result = {"steps": searcher.budget_steps, "cer": 0.5, "iou": 0.1}
    searcher.on_trial_result(trial_id, result)
    searcher.on_trial_complete(trial_id, result)


def test_fail_fast_trips_when_the_first_trials_fail_alike(tmp_path):
    searcher = _searcher(tmp_path, fail_fast=3)
    for i, size in enumerate(("2.00", "4.50", "1.25")):
        assert searcher.abort_reason is None
        _fail_with(searcher, f"t{i}", f"out of memory: CUDA out of memory. Tried to allocate {size} GiB")
    assert searcher.abort_reason is not None
    expected = "the first 3 trials all failed with the same error: out of memory"
    assert searcher.abort_reason.startswith(expected)
    # What is still running when it trips is stopped, FAIL with the reason, never PRUNED.
    searcher.suggest("late")
    searcher.on_trial_complete("late", {"steps": 2, "cer": 0.5, "iou": 0.1})
    late = searcher.study.get_trials()[-1]
    assert late.state == TrialState.FAIL and late.user_attrs["error"].startswith("stopped: the first 3")


@pytest.mark.parametrize(
    "history",
    [
        ["fail:A", "fail:B", "fail:A"],  # different errors
        ["fail:A", "ok", "fail:A", "fail:A"],  # one success: the sweep works
        ["fail:A", "fail:A"],  # fewer than fail_fast finished
    ],
)
def test_fail_fast_keeps_going_otherwise(tmp_path, history):
    searcher = _searcher(tmp_path, fail_fast=3)
    for i, event in enumerate(history):
        if event == "ok":
            _complete(searcher, f"t{i}")
        else:
            _fail_with(searcher, f"t{i}", f"RuntimeError: {event}")
    assert searcher.abort_reason is None


def test_pickle_holds_no_storage(searcher, tmp_path):
    searcher.suggest("a")
    blob = pickle.dumps(searcher)
    assert b"sqlite" not in blob and b"s.db" not in blob
    path = tmp_path / "state"
    searcher.save(str(path))
    assert "sqlite" not in path.read_text()


@pytest.mark.parametrize("kind", ["tpe", "nsga2", "gp", "random"])
def test_one_read_per_ask_samples_exactly_what_the_plain_sampler_does(tmp_path, kind):
    """The wrapped sampler proposes the same points as Optuna's own, one trial always
    running alongside (so TPE's constant liar is in play), from one read per ask."""
    from vlsweep.search.sampling import make_sampler
    from vlsweep.storages import open_storage

    space, _ = parse_space(None)
    settings = {"lora.vision": True, "lora.projector": "lora"}

    def run(sampler, name):
        study = optuna.create_study(
            study_name=name,
            storage=open_storage(f"sqlite:///{tmp_path / (name + '.db')}"),
            directions=["minimize", "maximize"],
            sampler=sampler,
        )
        reads = []
        inner_read = study._storage.get_all_trials
        study._storage.get_all_trials = lambda *a, **k: reads.append(1) or inner_read(*a, **k)
        proposed, reads_per_ask, running = [], [], None
        for i in range(13 if kind == "gp" else 24):  # GP fits are slow; 3 of them do
            before = len(reads)
            trial = study.ask()
            proposed.append(space.suggest(trial, settings))
            reads_per_ask.append(len(reads) - before)
            if running is not None:  # finish the previous one: one trial is always running
                lr = running.params["lr_llm"]
                study.tell(running, [abs(math.log10(lr) + 3), (i % 5) / 5])
            running = trial
        return proposed, reads_per_ask

    sampler_cls = {
        "tpe": optuna.samplers.TPESampler,
        "nsga2": lambda seed: optuna.samplers.NSGAIISampler(seed=seed, population_size=8),
        "gp": optuna.samplers.GPSampler,
        "random": optuna.samplers.RandomSampler,
    }[kind]
    plain, plain_reads = run(sampler_cls(seed=0), "plain")
    wrapped_sampler = make_sampler(kind, 0)
    wrapped_sampler.inner = sampler_cls(seed=0)  # same settings as the plain one
    wrapped, wrapped_reads = run(wrapped_sampler, "wrapped")
    assert wrapped == plain
    # ask() reads once to look for queued trials; sampling adds at most one more.
    assert max(wrapped_reads) <= 2
    if kind == "tpe":
        assert max(plain_reads[11:]) > 5  # what the wrapper saves: one read per parameter


def _run_sweep_by_hand(tmp_path, name, order_of_completion, reproducible):
    """Two slots, 14 trials, finishing in the given order within each pair in flight; each
    trial's values depend on its parameters only. Returns the points proposed."""
    from vlsweep.search.sampling import make_sampler

    window = 2 if reproducible else None
    storage = f"sqlite:///{tmp_path / (name + '.db')}"
    study = optuna.create_study(
        study_name="t",
        storage=storage,
        directions=["minimize", "maximize"],
        sampler=make_sampler("tpe", 0, window),
    )
    space, _ = parse_space(None)
    searcher = OptunaAskTellSearcher(
        study,
        space,
        {"lora.vision": True, "lora.projector": "full"},
        ["cer", "iou"],
        100,
        reproducible_window=window,
    )

    def result(cfg):
        p = cfg["params"]
        return {
            "steps": 100,
            "cer": abs(math.log10(p["lr_llm"]) + 3),
            "iou": p["weight_ocr"] * p["lora_dropout"] * 10,
        }

    proposed, live, waited = {}, {}, 0
    for step in range(60):
        while len(live) < 2 and len(proposed) < 14:
            tid = f"r{len(proposed)}-{step}"
            cfg = searcher.suggest(tid)
            if cfg is None:
                waited += 1
                # What the progress line names: the older trial still in flight.
                assert searcher.holding == [c["optuna_trial"] for c in live.values()]
                break
            proposed[cfg["optuna_trial"]] = cfg["params"]
            live[tid] = cfg
        if not live:
            break
        # Which of the trials in flight finishes first: given by the order, else the oldest.
        first = order_of_completion[step % len(order_of_completion)]
        tid = sorted(live, key=lambda t: live[t]["optuna_trial"])[min(first, len(live) - 1)]
        searcher.on_trial_complete(tid, result(live.pop(tid)))
    assert len(proposed) == 14 and all(t.state == TrialState.COMPLETE for t in study.get_trials())
    return [proposed[k] for k in sorted(proposed)], waited


def test_a_reproducible_sweep_proposes_the_same_points_whatever_finishes_first(tmp_path):
    oldest_first, _ = _run_sweep_by_hand(tmp_path, "a", [0], reproducible=True)
    newest_first, waited = _run_sweep_by_hand(tmp_path, "b", [1, 1, 0], reproducible=True)
    assert oldest_first == newest_first
    assert waited > 0  # the newer trial finished first, so the next ask waited for the older
    # Without it, TPE's proposals follow the order in which results came in.
    plain_a, _ = _run_sweep_by_hand(tmp_path, "c", [0], reproducible=False)
    plain_b, _ = _run_sweep_by_hand(tmp_path, "d", [1, 1, 0], reproducible=False)
    assert plain_a != plain_b


def test_the_drivers_storage_proposes_and_stores_what_a_plain_one_does(tmp_path):
    """DriverStorage serves the driver's running trials from memory: the sampler proposes
    exactly the same points, the database ends up holding the same trials, and a trial
    another process enqueues mid-sweep is still picked up."""
    from vlsweep.search.driver_storage import DriverStorage
    from vlsweep.search.sampling import make_sampler
    from vlsweep.storages import open_storage

    def sweep(url, driver):
        storage = open_storage(url, kind=DriverStorage if driver else optuna.storages.RDBStorage)
        assert isinstance(storage.rdb, DriverStorage) == driver
        study = optuna.create_study(
            storage=storage,
            study_name="s",
            directions=["minimize", "maximize"],
            sampler=make_sampler("tpe", 0),
        )
        running, asked = [], []
        for k in range(30):
            if k == 20:  # another process (a second storage on the file) enqueues a point
                optuna.load_study(study_name="s", storage=open_storage(url)).enqueue_trial(
                    {"x": 0.123, "c": "b"}
                )
            t = study.ask()
            x = t.suggest_float("x", 0, 1)
            asked.append((t.number, x, t.suggest_categorical("c", ["a", "b"])))
            t.set_user_attr("ray_trial_id", f"r{k}")
            t.set_user_attr("steps", k)
            running.append(t)
            if len(running) == 2:  # two in flight: the older one ends
                old = running.pop(0)
                if k % 5 == 0:
                    study.tell(old, state=TrialState.PRUNED)
                else:
                    study.tell(old, [old.params["x"], 1 - old.params["x"]])
        return asked

    def stored(url):
        return [
            (t.number, t.state, t.values, t.params, t.user_attrs)
            for t in optuna.load_study(study_name="s", storage=open_storage(url)).get_trials()
        ]

    plain, driver = f"sqlite:///{tmp_path / 'plain.db'}", f"sqlite:///{tmp_path / 'driver.db'}"
    asked = sweep(driver, True)
    assert asked == sweep(plain, False)
    assert (20, 0.123, "b") in asked
    assert stored(driver) == stored(plain)
    # A parameter that clashes with the study's is refused when it is suggested, as with a
    # plain storage: the first use of a name by the database, later ones against it; the
    # trial can still be told.
    study = optuna.load_study(
        study_name="s",
        storage=open_storage(driver, kind=DriverStorage),
        sampler=optuna.samplers.RandomSampler(0),
    )
    for k in range(3):
        t = study.ask()
        t.suggest_float("x", 0, 1)
        if k == 0:
            t.suggest_categorical("c", ["a", "b"])  # as the study has it
        else:
            with pytest.raises(ValueError):
                t.suggest_categorical("c", [1, 2])  # c has other choices in this study
        study.tell(t, state=TrialState.FAIL)
    reread = optuna.load_study(study_name="s", storage=open_storage(driver)).trials
    assert [t.state for t in reread[-3:]] == [TrialState.FAIL] * 3
    assert [set(t.params) for t in reread[-3:]] == [{"x", "c"}, {"x"}, {"x"}]


def test_the_drivers_held_parameters_survive_a_lost_database(tmp_path, monkeypatch):
    """The parameters DriverStorage holds are written with the trial's next write; when
    the database is lost right then, they stay held and the retried call writes them."""
    from tests.support.helpers import DatabaseOutage
    from vlsweep.search.driver_storage import DriverStorage
    from vlsweep.storages import open_storage

    monkeypatch.setattr("vlsweep.storages.time.sleep", lambda _s: None)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = open_storage(url, kind=DriverStorage)
    study = optuna.create_study(storage=storage, study_name="s", directions=["minimize", "maximize"])
    outage = DatabaseOutage(storage)
    for k in range(3):  # the first trial writes each name at once; later ones are held
        trial = study.ask()
        x = trial.suggest_float("x", 0, 1)
        trial.suggest_categorical("c", ["a", "b"])
        outage.left = 2
        trial.set_user_attr("ray_trial_id", f"r{k}")
        study.tell(trial, [x, k])
    stored = optuna.load_study(study_name="s", storage=open_storage(url)).trials
    assert [(t.state.name, set(t.params), t.user_attrs) for t in stored] == [
        ("COMPLETE", {"x", "c"}, {"ray_trial_id": f"r{k}"}) for k in range(3)
    ]
    assert outage.left == 0


def test_an_optuna_whose_internals_changed_gets_its_own_storage(monkeypatch):
    """DriverStorage overrides private RDBStorage methods; where they are gone or take
    other arguments, the sweep opens Optuna's own storage and says so, once."""
    from vlsweep.search import driver_storage

    said = []
    assert driver_storage.kind(said.append) is driver_storage.DriverStorage and not said
    monkeypatch.setattr(optuna.storages.RDBStorage, "_get_trials", lambda self, study_id, states: [])
    monkeypatch.setattr(
        optuna.storages.RDBStorage, "_create_new_trial", lambda self, study_id, *, template_trial=None: None
    )
    monkeypatch.delattr(optuna.storages.RDBStorage, "_set_trial_param_without_commit")
    assert driver_storage.kind(said.append) is optuna.storages.RDBStorage
    assert (
        len(said) == 1 and "(_create_new_trial, _set_trial_param_without_commit, _get_trials)" in said[0]
    ), said


def test_the_metrics_table_sets_the_trial_attrs(searcher):
    """Every metric of vlsweep.metrics other than the study's two values (cer, iou) is a
    user attr, as docs/sweep.md lists them; keys outside the table are not copied."""
    searcher.suggest("ray_a")
    result = {
        "steps": 100,
        "cer": 0.3,
        "iou": 0.4,
        "train_seconds": 2.0,
        "eval_seconds": 1.0,
        "parse_fail_rate": 0.1,
        "acc_iou50": 0.5,
        "iou_se": 0.02,
        "val_loss_ocr": 0.7,
        "val_loss_grounding": 0.8,
        "samples_per_second": 40.0,
        "cpu_seconds": 5.5,
        "load_seconds": 3.0,
    }
    searcher.on_trial_complete("ray_a", result)
    attrs = _only(searcher).user_attrs
    recorded = {k for k in result if k in attrs}
    assert recorded == set(result) - {"cer", "iou", "load_seconds"}


def test_a_failed_trial_records_the_cpu_it_spent(searcher):
    """A sweep's compute is every trial's, the ones that failed included."""
    from vlsweep.search.worker import ERROR_KEY

    searcher.suggest("ray_a")
    searcher.on_trial_complete(
        "ray_a", {ERROR_KEY: "FloatingPointError: loss is nan", "steps": 40, "cpu_seconds": 7.25}
    )
    trial = _only(searcher)
    assert trial.state.name == "FAIL" and trial.user_attrs["cpu_seconds"] == 7.25
    assert trial.user_attrs["error"].startswith("FloatingPointError")
