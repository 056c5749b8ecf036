"""The benchmarks' own logic, without training: the multi-fidelity replay's bookkeeping on
a synthetic curve table, the early-signal and transfer figures, the docs' tables."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

from mf_replay import methods, peers, score, simulator  # noqa: E402
from mf_replay.table import MAX_T, Table, at  # noqa: E402


@pytest.fixture
def table():
    import optuna

    from vlsweep.search.config import load_sweep_config
    from vlsweep.search.sampling import make_sampler

    cfg, _ = load_sweep_config(Path(__file__).parents[1] / "vlsweep" / "configs" / "demo-sweep.yaml")
    space, settings = cfg.search_space, cfg.settings()
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=make_sampler("random", 0))
    rows = []
    for i in range(40):
        params = space.suggest(study.ask(), settings)
        quality = (i % 10) / 10  # some configs are simply better, at every step
        curve = [
            {"steps": s, "cer": 1 - 0.5 * quality * s / 200, "iou": 0.1 * quality * s / 200}
            for s in range(20, 201, 20)
        ]
        if i == 7:
            curve = curve[:3]  # diverged after 60 steps
        rows.append({"config": i, "params": params, "curve": curve})
    return Table(rows, space), space, settings


def test_nearest_returns_the_recorded_config_itself(table):
    t, _, _ = table
    for row in t.rows[:5]:
        assert t.nearest(row["params"]) is row


def _replay(name, table, budget, hub=None):
    t, space, settings = table
    return simulator.replay(
        methods.make_method(name, space, settings, 0, [20, 60, 180], 3, hub), t, budget, 2
    )


def test_full_budget_spends_200_steps_per_trial_and_mo_asha_stops_some(table):
    t, space, settings = table
    budget = 10 * MAX_T
    full, full_started = _replay("tpe-full", table, budget)
    assert all(s % 20 == 0 for s, _ in full)  # time advances in evaluation intervals
    assert [hv for _, hv in full] == sorted(hv for _, hv in full)  # the front only grows
    # Every trial runs all 200 steps: the budget buys that many full trials, less the
    # two left running when it runs out and any that hit the diverging config.
    assert budget // MAX_T - 3 <= len(full) - 1 <= budget // MAX_T
    # The same steps buy each early-stopping method many more configs: most stop at the
    # first rungs.
    for name in ("mo-asha-random", "mo-asha-rung-tpe", "syne-tune-moasha"):
        asha, asha_started = _replay(name, table, budget)
        assert asha_started > full_started, name
        assert len(asha) - 1 < asha_started, name
    assert at(t.rows[7], 80) is None and at(t.rows[7], 60) is not None


def test_the_headline_figures_follow_the_issue_definitions():
    budget = 1000
    runs = {
        # Per seed: (history of (steps, hypervolume), trials started). TPE ends at 0.5 and 0.4.
        "tpe-full": [([(0, 0.0), (400, 0.3), (1000, 0.5)], 5), ([(0, 0.0), (600, 0.4)], 5)],
        # Reaches 95% of that seed's TPE final (0.475, then 0.38) at 200 and 300 steps.
        "mo-asha-random": [([(0, 0.0), (200, 0.48)], 9), ([(0, 0.0), (300, 0.39)], 9)],
        # Never on one seed, at 500 steps on the other: the median is infinite, so null.
        "mo-asha-tpe": [([(0, 0.0), (900, 0.1)], 9), ([(0, 0.0), (500, 0.39)], 9)],
        "syne-tune-moasha": [([(0, 0.0), (100, 0.2), (150, 0.6)], 9), ([(0, 0.0), (50, 0.45)], 9)],
    }
    figures = score.summarize(runs, budget)
    assert figures["tpe-full"]["steps_to_95pct"] == 0.8  # median of 1.0 and 0.6
    assert figures["mo-asha-random"]["steps_to_95pct"] == 0.25
    assert figures["mo-asha-tpe"]["steps_to_95pct"] is None
    assert figures["mo-asha-tpe"]["steps_to_95pct_per_seed"] == [None, 0.5]
    assert len(figures["tpe-full"]["median_hv"]) == score.BUDGETS
    assert figures["mo-asha-random"]["median_hv"][0] == 0.0  # at 50 steps
    assert figures["mo-asha-random"]["median_hv"][-1] == pytest.approx(0.435)
    v = score.verdict(figures)
    assert v["mo_asha"] == "mo-asha-random" and v["within_33pct"]
    # TPE's median ends higher (0.45); Syne Tune is ahead at every budget (0.525 from 150 steps).
    assert v["budgets_below_peer"] == {"tpe-full": [20], "syne-tune-moasha": list(range(1, 21))}
    assert not v["at_least_every_peer"]


def test_optunahub_multimetric_pruner_from_a_local_registry_copy(table, tmp_path):
    """Runs only where a copy of OptunaHub's registry is given (CI's quick mode has none)."""
    import os

    registry = os.environ.get("VLSWEEP_OPTUNAHUB_REGISTRY")
    if not registry:
        pytest.skip(
            "OptunaHub's registry lives on GitHub, which this machine cannot reach; set "
            "VLSWEEP_OPTUNAHUB_REGISTRY to a local checkout of optuna/optunahub-registry to run it"
        )
    hub, left_out = peers.load_hub(Path(registry))
    assert left_out is None
    # Over Optuna's SuccessiveHalvingPruner it cannot run (see OptunaHubMethod).
    assert "KeyError" in (peers.sha_error(hub) or "")
    history, started = _replay("optunahub-multimetric", table, 10 * MAX_T, hub)
    assert started > 10 and len(history) > 1


def test_early_signal_correlates_each_step_with_the_final_value():
    import early_signal

    rows = []
    for i in range(12):
        # IoU keeps its ranks from the start; CER's early ranks are the reverse of its last.
        curve = [
            {"steps": s, "iou": 0.1 + 0.01 * i * s / 100, "cer": 0.5 + (0.01 * i if s < 200 else -0.01 * i)}
            for s in (40, 100, 200)
        ]
        rows.append({"config": i, "curve": curve})
    rows.append({"config": 99, "curve": rows[0]["curve"][:1]})  # stopped before the end
    out = early_signal.early_signal(rows)
    assert (out["configs"], out["diverged"]) == (12, 1)
    first = out["steps"][0]
    assert (first["steps"], first["fraction"]) == (40, 0.2)
    assert first["spearman_iou"] == 1.0 and first["spearman_cer"] == -1.0
    assert [r["median_iou"] for r in out["steps"]] == sorted(r["median_iou"] for r in out["steps"])


def test_the_docs_tables_are_the_ones_their_benchmark_files_make():
    """Every marked table of the README and docs/ is what benchmarks/doc_tables.py makes
    from the file a benchmark wrote: a figure is never typed by hand, and a rerun that
    changed a file without refreshing the docs is caught."""
    import doc_tables

    cache: dict[str, str] = {}
    used: set[str] = set()
    for doc in doc_tables.DOCS:
        text = doc.read_text()
        used |= {m.group("name") for m in doc_tables.BLOCK.finditer(text)}
        assert doc_tables.refresh(text, cache) == text, (
            f"{doc}: a table differs from its file; run python benchmarks/doc_tables.py"
        )
    assert used == set(doc_tables.TABLES)  # every renderer is shown somewhere


def test_a_docs_table_is_made_from_its_file_between_its_markers():
    import doc_tables

    text = "before\n<!-- table: module_lr.scan -->\nstale\n<!-- /table -->\nafter\n"
    made = doc_tables.refresh(text, {"module_lr.scan": "| fresh |\n"})
    assert made == "before\n<!-- table: module_lr.scan -->\n| fresh |\n<!-- /table -->\nafter\n"
    with pytest.raises(SystemExit, match="unknown table 'nope'"):
        doc_tables.refresh("<!-- table: nope -->\n<!-- /table -->\n", {})


def test_syne_tunes_priority_is_a_sort_order_and_the_ranked_one_a_place_per_trial():
    """Why the replay runs Syne Tune's MOASHA twice: its default priority returns the
    items' sort order where MOASHA's rungs read a priority per item (the last: the new
    trial's). The second-best new trial below gets the worst item's index, 0."""
    import numpy as np
    from syne_tune.optimizer.schedulers.multiobjective.multiobjective_priority import NonDominatedPriority

    x = np.array([[0.9, 0.9], [0.1, 0.1], [0.5, 0.5], [0.2, 0.8]])
    assert list(NonDominatedPriority()(x)) == [1, 3, 2, 0]
    assert list(peers.ranked_priority()(x)) == [3, 0, 2, 1]


def _transfer_rows(source: list[float], target: list[float], noise: float = 0.0) -> list[dict]:
    """Rows of the transfer benchmark's rank part: configuration k has ``source[k]`` and
    ``target[k]`` as both metrics; seed 1 is off by ``noise`` times (-1)^k."""
    rows = []
    for k, (a, b) in enumerate(zip(source, target, strict=True)):
        for seed in (0, 1):
            d = noise * (-1) ** k * seed
            rows += [
                {"role": "source", "key": k, "seed": seed, "cer": a + d, "iou": a + d},
                {"role": "target", "key": k, "seed": seed, "cer": b + d, "iou": -b + d},
            ]
    return rows


def test_transfer_rank_correlation_between_models_and_each_with_itself():
    import transfer

    same = transfer.correlations(_transfer_rows([0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]))
    assert same["rank_correlation"] == {"cer": 1.0, "iou": -1.0}
    assert same["rank_correlation_by_seed"] == {"cer": 1.0, "iou": -1.0}
    assert same["self_correlation"]["source"] == {"cer": 1.0, "iou": 1.0}
    # Seed noise larger than the gaps between configurations: a model disagrees with itself.
    noisy = transfer.correlations(_transfer_rows([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], noise=0.25))
    assert noisy["self_correlation"]["target"]["cer"] < 0.5
    assert noisy["rank_correlation"]["cer"] == 1.0  # the means agree: the same noise on both
    # A diverged run (no metrics) ranks below every real one; a constant column orders nothing.
    rows = _transfer_rows([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    for r in rows:
        if r["key"] == 0 and r["role"] == "target":
            r["cer"] = r["iou"] = None
    diverged = transfer.correlations(rows)
    assert diverged["rank_correlation"]["cer"] == -0.5 and diverged["diverged"] == {"source": 0, "target": 2}
    assert transfer.spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None


def test_transfer_break_even_prices_target_trials_at_r_source_trials():
    import transfer

    # Source sweep 160 s; the carried trials 50 s and the target sweep 160 s of target CPU at
    # r = 2, i.e. 25 and 80 source-trial seconds: 160 + 25 r = 80 r at r = 160/55.
    assert transfer.break_even(160.0, 50.0, 160.0, 2.0) == pytest.approx(160 / 55)
    assert transfer.break_even(160.0, 160.0, 160.0, 2.0) is None
    rd = {
        "seed": 0,
        "front_size": 3,
        "carried": {
            "hypervolume": 0.5,
            "cpu_s": 210.0,
            "source_cpu_s": 160.0,
            "target_cpu_s": 50.0,
            "target_trials": 3,
        },
        "carried_plus": {
            "hypervolume": 0.6,
            "cpu_s": 280.0,
            "source_cpu_s": 160.0,
            "target_cpu_s": 120.0,
            "target_trials": 7,
        },
        "target_sweep": {
            "hypervolume": 0.6,
            "cpu_s": 160.0,
            "source_cpu_s": 0.0,
            "target_cpu_s": 160.0,
            "target_trials": 16,
        },
        "rescale": {"none": 0.5, "hidden": 0.55},
    }
    second = {
        **rd,
        "seed": 1,
        "carried": {**rd["carried"], "hypervolume": 0.58},
        "rescale": {"none": 0.58, "hidden": 0.5},
    }
    summary = transfer.summarize([rd, second], 2.0)
    assert summary["arms"]["carried"]["hypervolume"] == [0.5, 0.58]
    assert summary["break_even_r"] == pytest.approx(160 / 55)
    v = transfer.verdict(summary)
    assert v["carried_over_target"] == pytest.approx(0.54 / 0.6)
    assert not v["goal_95_met"]
    # Seed by seed, hidden gains +0.05 and -0.08: a median gain of -0.015, not better.
    assert v["rescale_gains"]["hidden"] == pytest.approx([0.05, -0.08])
    assert v["rescale_better_than_spread"] == {"hidden": False}
    # Gains larger than their spread over the seeds: better (paired by seed, so a seed that
    # is hard for every rule does not hide the rule's gain).
    third = {**rd, "seed": 2, "rescale": {"none": 0.2, "hidden": 0.31}}
    fourth = {**rd, "seed": 3, "rescale": {"none": 0.9, "hidden": 0.99}}
    v = transfer.verdict(transfer.summarize([rd, third, fourth], 2.0))
    assert v["rescale_median_gain"]["hidden"] == pytest.approx(0.09)
    assert v["rescale_better_than_spread"] == {"hidden": True}


def test_transfer_family_cost_ratio_grows_with_the_language_model_and_shrinks_with_the_image():
    import transfer

    crop, page = transfer.INPUTS.values()
    assert transfer.family_r("2B", *crop) == 1.0
    assert 1 < transfer.family_r("7B", *page) < transfer.family_r("7B", *crop) < 7.6 / 1.5
    # The shared tower's share of the cost stays: r is below the language models' 48x.
    assert transfer.family_r("7B", *crop) < transfer.family_r("72B", *page) < 72 / 1.5
