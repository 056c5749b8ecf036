"""Real sweeps: local Ray, SQLite (and PostgreSQL when a server is given), tiny model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.support.helpers import swift_argv
from tests.support.sweeps import check_invariants, edit_yaml, sweep_cfg
from vlsweep import outcomes
from vlsweep.errors import UserInputError
from vlsweep.search.config import load_sweep_config
from vlsweep.search.sweep import run_sweep

pytestmark = pytest.mark.integration


def _stop_trial_2():
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class StopTrial2(FIFOScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            # Like ASHA: decide on evaluation results (training-curve rows carry no cer).
            if trial.config["optuna_trial"] == 2 and "cer" in result:
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE

    return StopTrial2()


def test_sweep_records_fail_prune_warm_start_and_reopens_in_plain_optuna(
    ray_local, tmp_path, tiny_checkpoint, demo_data, storage
):
    path = sweep_cfg(
        tmp_path,
        tiny_checkpoint("qwen2_vl"),
        demo_data,
        warm_start=[
            {"params": {"lr_llm": 1e-3, "lora_r": 2}, "values": {"cer": 0.9, "iou": 0.01}},
            {"params": {"lr_llm": 1e30, "lora_r": 2}},  # diverges: the loss overflows to nan
        ],
    )
    cfg, base_dir = load_sweep_config(path)
    url = storage
    logged: list[str] = []
    run_sweep(cfg, base_dir, url, scheduler=_stop_trial_2(), log=logged.append)

    study = optuna.load_study(study_name="t", storage=url)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"]
    assert study.metric_names == ["cer", "iou"]
    assert {"config", "vlsweep_version"} <= set(study.user_attrs)
    check_invariants(study)
    by_number = {t.number: t for t in study.get_trials()}
    assert by_number[0].state == TrialState.COMPLETE and by_number[0].values == [0.9, 0.01]
    assert by_number[1].state == TrialState.FAIL
    assert by_number[1].user_attrs["error"].startswith("FloatingPointError: training loss is nan"), by_number[
        1
    ]
    assert by_number[2].state == TrialState.PRUNED and by_number[2].user_attrs["steps"] == 2
    finished = [t for t in study.get_trials() if t.number > 0]
    assert len(finished) == 4  # the budget counts the trials Ray ran
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    assert complete, "at least one real trial completes"
    for t in complete:
        assert t.user_attrs["steps"] == 4 and set(t.params) == {"lr_llm", "lora_r"}
        assert {"train_seconds", "eval_seconds", "parse_fail_rate", "ray_trial_id"} <= set(t.user_attrs)
    password = os.environ.get("PGPASSWORD")
    if password and url.startswith("postgresql"):
        # Never in a study attr, a trial attr, the log, or anything Ray wrote to disk.
        assert password not in repr(study.user_attrs) + repr([t.user_attrs for t in study.get_trials()])
        assert password not in "\n".join(logged)
        for f in (tmp_path / "runs").rglob("*"):
            if f.is_file():
                assert password.encode() not in f.read_bytes(), f


def test_missing_objective_metric_fails_the_trial(ray_local, tmp_path, tiny_checkpoint, demo_data):
    ocr_only = tmp_path / "ocr"
    ocr_only.mkdir()
    shutil.copytree(demo_data / "img", ocr_only / "img")
    for split in ("train", "val"):
        lines = (demo_data / f"{split}.jsonl").read_text().splitlines()
        (ocr_only / f"{split}.jsonl").write_text("\n".join(x for x in lines if '"ocr"' in x) + "\n")
    path = sweep_cfg(tmp_path, tiny_checkpoint("qwen2_vl"), ocr_only, trials=1)
    cfg, base_dir = load_sweep_config(path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    run_sweep(cfg, base_dir, url, log=lambda _m: None)
    (trial,) = optuna.load_study(study_name="t", storage=url).get_trials()
    assert trial.state == TrialState.FAIL
    assert "metric 'iou' is missing" in trial.user_attrs["error"]


def test_a_logger_that_is_not_installed_is_an_error_before_anything_is_written(
    tmp_path, tiny_checkpoint, demo_data, monkeypatch
):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    path = sweep_cfg(tmp_path, tiny_checkpoint("qwen2_vl"), demo_data)
    raw = yaml.safe_load(path.read_text())
    raw["logging"] = {"mlflow": {"tracking_uri": "file:///tmp/mlruns"}}
    path.write_text(yaml.safe_dump(raw))
    cfg, base_dir = load_sweep_config(path)
    db = tmp_path / "db.sqlite"
    with pytest.raises(UserInputError, match=r"logging.mlflow: MLflow is not installed"):
        run_sweep(cfg, base_dir, f"sqlite:///{db}", log=lambda _m: None)
    assert not db.exists()


def test_reopening_with_other_objectives_is_an_error(tmp_path, tiny_checkpoint, demo_data):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    optuna.create_study(study_name="t", storage=url, directions=["minimize", "minimize"])
    cfg, base_dir = load_sweep_config(sweep_cfg(tmp_path, tiny_checkpoint("qwen2_vl"), demo_data))
    with pytest.raises(UserInputError, match="exists with objectives"):
        run_sweep(cfg, base_dir, url, log=lambda _m: None)


def test_reused_actor_never_carries_weights_to_the_next_trial(
    ray_local, tmp_path, tiny_checkpoint, demo_data
):
    """One actor runs three trials: A, then B (large LRs, projector fully trained), then A
    again. The second A must match the first, which ran in the fresh actor, exactly; a
    leftover adapter or a projector not restored after B would change it."""
    a = {"lr_llm": 1e-3, "lr_projector": 1e-3}
    b = {"lr_llm": 3e-2, "lr_projector": 3e-2}
    path = sweep_cfg(
        tmp_path,
        tiny_checkpoint("qwen2_vl"),
        demo_data,
        trials=3,
        max_concurrent=1,
        warm_start=[{"params": a}, {"params": b}, {"params": a}],
    )
    raw = yaml.safe_load(path.read_text())
    raw["space"] = {
        "lr_llm": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "lr_projector": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    }
    raw["lora"] = {"projector": "full"}
    raw["resources"] = {"reuse_actors": True}
    path.write_text(yaml.safe_dump(raw))
    cfg, base_dir = load_sweep_config(path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    run_sweep(cfg, base_dir, url, log=lambda _m: None)

    first, other, again = optuna.load_study(study_name="t", storage=url).get_trials()
    assert [t.state for t in (first, other, again)] == [TrialState.COMPLETE] * 3
    assert first.params == again.params == a and other.params == b
    # The same process ran all three: the actor was reused.
    assert first.user_attrs["worker_pid"] == other.user_attrs["worker_pid"] == again.user_attrs["worker_pid"]
    # Each records when its fine-tune began training: after it was asked for, before it ended.
    for t in (first, other, again):
        started = t.user_attrs["train_started"]
        assert t.datetime_start.timestamp() <= started <= t.datetime_complete.timestamp()
    keys = ("val_loss_ocr", "val_loss_grounding")
    assert [first.user_attrs[k] for k in keys] != [other.user_attrs[k] for k in keys], (
        "B must train differently"
    )
    assert [first.user_attrs[k] for k in keys] == [again.user_attrs[k] for k in keys]
    assert first.values == again.values


def test_vlsweep_export_reproduces_the_trial_with_vlsweep_train(
    ray_local, tmp_path, tiny_checkpoint, demo_data
):

    from vlsweep.export import export
    from vlsweep.results import SweepResults, pick

    path = sweep_cfg(tmp_path, tiny_checkpoint("qwen2_vl"), demo_data, trials=3)
    cfg, base_dir = load_sweep_config(path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    run_sweep(cfg, base_dir, url, log=lambda _m: None)
    results = SweepResults.of(optuna.load_study(study_name="t", storage=url))
    trial = pick(results, "knee")
    export(results, trial, "vlsweep", tmp_path / "exp")
    metrics = _train_export(tmp_path)
    # Same params, budget, seed and data on the same CPU: the same numbers.
    assert [metrics["cer"], metrics["iou"]] == pytest.approx(trial.values, abs=1e-6)
    assert metrics["val_loss_ocr"] == pytest.approx(trial.user_attrs["val_loss_ocr"], rel=1e-5)

    # The trial's training curves reached TensorBoard through Ray Tune's logger.
    tags = _tensorboard_tags(Path(trial.user_attrs["log_dir"]))
    assert {"ray/tune/train/loss_ocr", "ray/tune/train/loss_grounding", "ray/tune/train/lr_llm"} <= tags
    assert "ray/tune/cer" in tags and any(t.startswith("ray/tune/train/grad_norm_") for t in tags)


def _train_export(tmp_path: Path) -> dict:
    """`vlsweep train` on the vlsweep export in tmp_path/exp: its metrics.json."""
    import json

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlsweep.cli",
            "train",
            str(tmp_path / "exp" / "train.yaml"),
            "-o",
            str(tmp_path / "re"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads((tmp_path / "re" / "metrics.json").read_text())


def _tensorboard_tags(log_dir: Path) -> set[str]:
    """Scalar tags in the TensorBoard event files of a directory (TFRecord framing)."""
    import struct

    from tensorboardX.proto import event_pb2

    tags: set[str] = set()
    files = list(log_dir.glob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file in {log_dir}"
    for f in files:
        data, i = f.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12 : i + 12 + n])
            tags |= {v.tag for v in event.summary.value}
            i += 12 + n + 4
    return tags


def test_mo_asha_sweep_prunes_at_rungs_and_only_full_budget_trials_complete(
    ray_local, tmp_path, tiny_checkpoint, demo_data
):
    path = sweep_cfg(tmp_path, tiny_checkpoint("qwen2_vl"), demo_data, trials=8, max_concurrent=2)
    raw = yaml.safe_load(path.read_text())
    raw["budget"].update(steps=9, eval_every=None)
    raw["search"].update(early_stopping="mo-asha", grace_steps=1, reduction_factor=3)
    path.write_text(yaml.safe_dump(raw))
    cfg, base_dir = load_sweep_config(path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    run_sweep(cfg, base_dir, url, log=lambda _m: None)
    study = optuna.load_study(study_name="t", storage=url)
    check_invariants(study)
    trials = study.get_trials()
    assert len(trials) == 8
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned and complete, [(t.number, t.state, t.user_attrs.get("steps")) for t in trials]
    assert {t.user_attrs["steps"] for t in pruned} <= {1, 3}  # stopped at a rung
    assert all(t.user_attrs["steps"] == 9 for t in complete)
    # What each trial measured at the rungs it reached is on it, for the sampler to learn
    # from (search.learn_from_rungs, on by default).
    for t in pruned + complete:
        reached = {str(r) for r in (1, 3) if r <= t.user_attrs["steps"]}
        assert set(t.user_attrs["rungs"]) == reached, (t.number, t.user_attrs)
        assert all(len(v) == 2 and v[0] >= 0 and 0 <= v[1] <= 1 for v in t.user_attrs["rungs"].values())


def test_rays_asha_sweep_runs_with_results_that_carry_no_objective(
    ray_local, tmp_path, tiny_checkpoint, demo_data
):
    """Ray's ASHA names a metric, and Tune's strict check would refuse the results that
    carry none (where a trial runs, its curves): the sweep allows them, ASHA judges the
    evaluations."""
    path = sweep_cfg(tmp_path, tiny_checkpoint("qwen2_vl"), demo_data, trials=4, max_concurrent=2)
    raw = yaml.safe_load(path.read_text())
    raw["budget"].update(steps=9, eval_every=None)
    raw["search"].update(early_stopping="asha", grace_steps=1, reduction_factor=3)
    path.write_text(yaml.safe_dump(raw))
    cfg, base_dir = load_sweep_config(path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    run_sweep(cfg, base_dir, url, log=lambda _m: None)
    study = optuna.load_study(study_name="t", storage=url)
    check_invariants(study)
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), [
        (t.number, t.state, t.user_attrs.get("error")) for t in trials
    ]


def test_every_export_format_writes_the_values_the_trial_ran_with(
    ray_local, tmp_path, tiny_checkpoint, demo_data
):
    """A space that leaves parameters out (lr_llm, warmup_ratio, weight_ocr: the engine's
    defaults apply) and fixes others: each format writes what the trial's metrics.json says
    it trained with, never a default of its own."""
    import json

    from peft import LoraConfig

    from vlsweep.export import export
    from vlsweep.results import SweepResults

    path = sweep_cfg(tmp_path, tiny_checkpoint("qwen2_vl"), demo_data, trials=1)
    raw = yaml.safe_load(path.read_text())
    raw["lora"] = {"vision": True, "projector": "full"}
    raw["space"] = {
        "lr_vision": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        "lr_projector": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        "lora_r": {"type": "categorical", "choices": [2, 4]},
        "lora_alpha_ratio": 1.5,
        "lora_dropout": 0.05,
        "mix_temperature": {"type": "float", "low": 1.0, "high": 3.0},
    }
    path.write_text(yaml.safe_dump(raw))
    cfg, base_dir = load_sweep_config(path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    run_sweep(cfg, base_dir, url, log=lambda _m: None)
    results = SweepResults.of(optuna.load_study(study_name="t", storage=url))
    (trial,) = results.complete
    ran = json.loads((tmp_path / "runs" / f"trial-{trial.number:04d}" / "metrics.json").read_text())
    p, probs, steps = ran["params"], ran["task_probabilities"], cfg.budget.steps
    assert p["lr_llm"] == 1e-3 and p["warmup_ratio"] == 0.1 and p["weight_ocr"] == 0.5  # defaults
    assert p["lora_alpha_ratio"] == 1.5 and p["lora_dropout"] == 0.05  # fixed
    warmup = round(p["warmup_ratio"] * steps)
    alpha = p["lora_alpha_ratio"] * p["lora_r"]

    export(results, trial, "vlsweep", tmp_path / "v")
    assert yaml.safe_load((tmp_path / "v" / "train.yaml").read_text())["params"] == p

    export(results, trial, "llamafactory", tmp_path / "lf")
    lf = yaml.safe_load((tmp_path / "lf" / "llamafactory.yaml").read_text())
    assert (lf["learning_rate"], lf["lora_rank"], lf["lora_alpha"], lf["lora_dropout"]) == (
        p["lr_llm"],
        p["lora_r"],
        round(alpha),
        p["lora_dropout"],
    )
    assert lf["warmup_steps"] == warmup
    tasks = [d.removeprefix("vlsweep_train_") for d in lf["dataset"].split(",")]
    mix = dict(zip(tasks, map(float, lf["interleave_probs"].split(",")), strict=True))
    assert mix == pytest.approx(probs, abs=1e-4)

    export(results, trial, "swift", tmp_path / "sw", force=True)
    script = (tmp_path / "sw" / "swift_sft.sh").read_text()
    argv = swift_argv(script)
    flag = {a[2:]: argv[i + 1] for i, a in enumerate(argv) if a.startswith("--")}
    assert float(flag["learning_rate"]) == p["lr_llm"] and float(flag["vit_lr"]) == p["lr_vision"]
    assert float(flag["aligner_lr"]) == p["lr_projector"] and float(flag["lora_dropout"]) == p["lora_dropout"]
    assert (int(flag["lora_rank"]), int(flag["lora_alpha"]), int(flag["warmup_steps"])) == (
        p["lora_r"],
        round(alpha),
        warmup,
    )

    export(results, trial, "peft", tmp_path / "peft")
    lora = LoraConfig.from_pretrained(str(tmp_path / "peft"))
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (p["lora_r"], alpha, p["lora_dropout"])
    groups = json.loads((tmp_path / "peft" / "param_groups.json").read_text())
    assert {g["name"]: g["lr"] for g in groups["groups"]} == {
        "vision": p["lr_vision"],
        "projector": p["lr_projector"],
        "llm": p["lr_llm"],
    }
    assert (
        groups["schedule"]["warmup_ratio"] == p["warmup_ratio"]
        and groups["schedule"]["warmup_steps"] == warmup
    )
    assert groups["task_loss_weights"] == {"ocr": p["weight_ocr"], "grounding": 1 - p["weight_ocr"]}
    assert groups["mix_temperature"] == p["mix_temperature"]


def test_a_learnable_balance_trial_resumes_and_exports_like_any_other(
    ray_local, tmp_path, tiny_checkpoint, demo_data
):
    import json

    from vlsweep.export import export
    from vlsweep.results import SweepResults, pick

    path = sweep_cfg(tmp_path, tiny_checkpoint("qwen2_vl"), demo_data, trials=2)
    edit_yaml(
        path,
        lora={"vision": True},
        strategies={"loss_balance": True, "curriculum": True, "lora_layout": True},
        data={"retain": str(demo_data / "retain.jsonl")},
        space={
            "lr_llm": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "loss_balance": {"type": "categorical", "choices": ["uncertainty", "famo"]},
        },
    )
    edit_yaml(path, objectives=["cer", "iou", "forgetting"])
    cfg, base_dir = load_sweep_config(path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    run_sweep(cfg, base_dir, url, log=lambda _m: None)
    # Resumed from the config the study recorded (as `vlsweep resume` does), one more trial:
    # the recorded space, the strategies' parameters in it, carries on.
    recorded = optuna.load_study(study_name="t", storage=url).user_attrs["config"]
    recorded["search"]["trials"] = 3
    run_sweep(type(cfg).model_validate(recorded), base_dir, url, resume=True, log=lambda _m: None)
    study = optuna.load_study(study_name="t", storage=url)
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(done) == 3
    assert all(t.params["loss_balance"] in ("uncertainty", "famo") for t in done)
    assert all({"curriculum_ratio", "lora_targets_llm", "lora_r_vision"} <= set(t.params) for t in done)
    assert study.metric_names == ["cer", "iou", "forgetting"] and all(t.values[2] > 0 for t in done)
    results = SweepResults.of(study)
    trial = pick(results, "knee")  # the knee in three objectives
    assert trial in results.front
    from vlsweep.report import figures

    figs = figures(results, trial.number)  # the 3-D front and its three flat projections
    assert {d.type for d in figs["pareto"].data} == {"scatter3d"}
    assert {d.type for d in figs["pareto-pairs"].data} == {"scatter"}
    export(results, trial, "vlsweep", tmp_path / "exp")
    metrics = _train_export(tmp_path)
    assert metrics["params"]["loss_balance"] == trial.params["loss_balance"]
    # The balance's learned state starts fresh and follows the same steps: the same numbers.
    assert [metrics["cer"], metrics["iou"], metrics["forgetting"]] == pytest.approx(trial.values, abs=1e-6)
    log = [json.loads(line) for line in (tmp_path / "re" / "train_log.jsonl").read_text().splitlines()]
    assert {"weight_ocr", "loss_objective"} <= set(log[-1])  # the balance ran and logged its own


def test_a_qlora_sweep_on_a_4bit_base_completes_on_the_cpu(ray_local, tmp_path, tiny_checkpoint, demo_data):
    """model.quantization: each trial's worker loads the base in 4 bits (bitsandbytes'
    CPU kernels), trains LoRA on it and is scored; the study records the quantization."""
    pytest.importorskip("bitsandbytes")
    path = sweep_cfg(tmp_path, tiny_checkpoint("qwen2_vl"), demo_data, trials=2)
    edit_yaml(path, model={"quantization": {"bits": 4, "type": "nf4", "double_quant": True}})
    cfg, base_dir = load_sweep_config(path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    run_sweep(cfg, base_dir, url, log=lambda _m: None)
    study = optuna.load_study(study_name="t", storage=url)
    check_invariants(study)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2
    assert study.user_attrs["config"]["model"]["quantization"] == {
        "bits": 4,
        "type": "nf4",
        "double_quant": True,
    }


def test_a_sweep_of_the_wide_model_carries_the_small_ones_front(ray_local, tmp_path, demo_data):
    """search.transfer_from: the target sweep's first trials re-run the source study's front
    (knee first) on the larger model; the source's trials stay out of the target study; the
    study records transfer_from (so resume keeps it); status shows both models' metrics."""
    from vlsweep.status import status_text

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    (tmp_path / "src").mkdir()
    (tmp_path / "tgt").mkdir()
    src_path = sweep_cfg(tmp_path / "src", "builtin:tiny-qwen2-vl", demo_data, trials=3)
    edit_yaml(src_path, name="small")
    cfg, base_dir = load_sweep_config(src_path)
    run_sweep(cfg, base_dir, url, log=lambda _m: None)
    source = optuna.load_study(study_name="small", storage=url)

    tgt_path = sweep_cfg(tmp_path / "tgt", "builtin:tiny-qwen2-vl-wide", demo_data, trials=4)
    edit_yaml(tgt_path, name="wide", search={"transfer_from": {"study": "small"}})
    cfg, base_dir = load_sweep_config(tgt_path)
    lines: list[str] = []
    run_sweep(cfg, base_dir, url, log=lines.append)
    study = optuna.load_study(study_name="wide", storage=url)
    check_invariants(study)

    front = outcomes.pareto_front(source)
    carried = [t for t in study.get_trials() if "carried" in t.user_attrs]
    assert [t.number for t in carried] == list(range(len(front)))  # first, one per front point
    assert carried[0].user_attrs["carried"]["knee"]
    assert {t.user_attrs["carried"]["trial"] for t in carried} == {t.number for t in front}
    for t in carried:
        origin = source.trials[t.user_attrs["carried"]["trial"]]
        assert t.params == origin.params
        assert t.user_attrs["carried"]["values"] == dict(zip(["cer", "iou"], origin.values, strict=True))
    assert len(study.get_trials()) == 4 and min(t.number for t in study.get_trials()) == 0
    assert study.user_attrs["config"]["search"]["transfer_from"]["study"] == "small"
    assert any(line.startswith("carrying study 'small' (qwen2_vl, language model 96 wide)") for line in lines)
    text = status_text("wide", url)
    assert "carried from study 'small' (its front, re-run on this model):" in text
    assert "(knee)" in text
    from vlsweep.report import render_html
    from vlsweep.results import SweepResults

    page = render_html(SweepResults.of(study), None, {})
    assert "<h2>Carried from small</h2>" in page and "(knee)" in page

    # Refused before anything runs: a study carrying itself, and a source with nothing to carry.
    edit_yaml(tgt_path, name="again", search={"transfer_from": {"study": "again"}})
    optuna.create_study(study_name="again", storage=url, directions=["minimize", "maximize"])
    with pytest.raises(UserInputError, match="'again' is this sweep's own study"):
        run_sweep(*load_sweep_config(tgt_path), url, log=lambda _m: None)
    optuna.create_study(study_name="empty", storage=url, directions=["minimize", "maximize"])
    edit_yaml(tgt_path, name="other", search={"transfer_from": {"study": "empty"}})
    with pytest.raises(UserInputError, match="study 'empty' has no complete, feasible trial to carry"):
        run_sweep(*load_sweep_config(tgt_path), url, log=lambda _m: None)
