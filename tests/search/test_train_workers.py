"""Trials on several train workers: real Ray, real Ray Train, gloo on the CPU.

A 2-worker run must make the 1-worker run's updates: the same global batch split over
the ranks, each task's mean over the global batch, DDP (or, for a Jacobian balance, the
averaged task gradients) bringing the ranks' parts together."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from tests.support.helpers import train_config
from tests.support.sweeps import check_invariants, edit_yaml, sweep_cfg
from vlsweep.search.config import load_sweep_config
from vlsweep.search.sweep import run_sweep

BALANCES = ("static", "famo", "upgrad")
# A Jacobian balance needs each task's whole gradient: not under FSDP.
SHARDED_BALANCES = ("static", "famo")
FINAL_BALANCES = ("static", "famo")  # static weights and one dynamic balance
STEPS = 20


def _losses_per_rank():
    """Ray Train's per-worker function: 20 steps of each balance, each step's loss reported
    by the main rank. Made here: a nested function travels to the workers by value (they
    cannot import a test module by name)."""

    def _per_rank(loop: dict) -> None:
        import torch

        from vlsweep.config import TrainConfig
        from vlsweep.params import TrialParams
        from vlsweep.trials import load_base, load_data, run_trial
        from vlsweep.trials.data import make_mixer
        from vlsweep.trials.engine import Trainer
        from vlsweep.trials.ranks import Ranks

        torch.set_num_threads(1)
        ranks = Ranks.current(loop["strategy"])
        cfg = TrainConfig.model_validate(loop["cfg"])
        data = load_data(cfg.data, Path("."))
        out: dict[str, list[float]] = {}
        shares: set[tuple[int, ...]] = set()  # how many samples each rank trained on
        held: list[int] = []
        for balance in loop["balances"]:
            params = TrialParams(lora_dropout=0.0, loss_balance=balance, lr_llm=3e-3, lr_projector=3e-3)
            torch.manual_seed(cfg.seed)
            base = load_base(cfg.model)  # a sharded model is not taken apart: a base each
            trainer = Trainer(params, cfg.budget, cfg=cfg, data=data, base=base, ranks=ranks)
            trainer.attach()
            trainer.model.train()
            if ranks.sharded and not held:  # each rank's storage of its parameter shards
                local = [p.to_local() for p in trainer.model.parameters()]
                held.extend(ranks.gather(sum(t.untyped_storage().nbytes() for t in local)))
            mixer = make_mixer(data.train, params, cfg.budget.steps, cfg.seed)
            losses = []
            for step in range(1, STEPS + 1):
                batch = ranks.share(mixer.batch(cfg.budget.batch_size, step))
                shares.add(tuple(ranks.gather(len(batch))))
                losses.append(float(trainer.step(trainer.train_batch(batch), step)["loss"]))
            out[balance] = losses
        # Whole trials (run_trial: the evaluation on the main rank), per balance and seed.
        finals: dict[str, list[float]] = {}
        for balance in loop["final_balances"]:
            for seed in loop["seeds"]:
                params = TrialParams(lora_dropout=0.0, loss_balance=balance, lr_llm=3e-3, lr_projector=3e-3)
                seeded = cfg.model_copy(update={"seed": seed})
                got = run_trial(params, seeded.budget, cfg=seeded, data=data, ranks=ranks)
                if ranks.main:
                    finals[f"{balance}/{seed}"] = [got["cer"], got["iou"]]
        if ranks.main:  # Ray Train keeps only a checkpoint's metrics: the losses go to a file
            Path(loop["out"]).write_text(
                json.dumps(
                    {
                        "losses": out,
                        "world": ranks.world,
                        "shares": sorted(shares),
                        "held": held,
                        "finals": finals,
                    }
                )
            )

    return _per_rank


def _estimated_shards(cfg: dict) -> int:
    """The parameter bytes the memory estimate gives each of 2 FSDP ranks of the
    equivalence run's first trial (static balance), from the model unsharded."""
    from vlsweep.config import TrainConfig
    from vlsweep.params import TrialParams
    from vlsweep.trials import load_base, load_data
    from vlsweep.trials.engine import Trainer
    from vlsweep.trials.memory import shard_bytes

    train = TrainConfig.model_validate(cfg)
    base = load_base(train.model)
    params = TrialParams(lora_dropout=0.0, loss_balance="static", lr_llm=3e-3, lr_projector=3e-3)
    trainer = Trainer(params, train.budget, cfg=train, data=load_data(train.data, Path(".")), base=base)
    trainer.attach()
    shards = shard_bytes(trainer.model, base.dtype, 2, set(base.model._no_split_modules))
    return shards["frozen"] + shards["trained"]


def _run(cfg: dict, workers: int, tmp_path: Path, strategy: str = "ddp") -> dict[str, list[float]]:
    from ray import train
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        _losses_per_rank(),
        train_loop_config={
            "cfg": cfg,
            "balances": BALANCES if strategy == "ddp" else SHARDED_BALANCES,
            "out": str(tmp_path / f"{workers}{strategy}.json"),
            "strategy": strategy,
            # The final CER and IoU of whole trials: 3 seeds on 1 worker (their spread is
            # the tolerance), seed 0 on 2 (ddp).
            "final_balances": FINAL_BALANCES if strategy == "ddp" else (),
            "seeds": (0, 1, 2) if workers == 1 else (0,),
        },
        scaling_config=train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=train.RunConfig(name=f"equiv-{workers}-{strategy}", storage_path=str(tmp_path / "ray")),
    )
    trainer.fit()
    got = json.loads((tmp_path / f"{workers}{strategy}.json").read_text())
    assert got["world"] == workers
    # Every step split the global batch of 7 over the ranks, not copied it to each.
    assert got["shares"] == ([[7]] if workers == 1 else [[4, 3]]), got["shares"]
    return got


@pytest.mark.integration
def test_two_workers_make_the_one_worker_updates(ray_local, tiny_checkpoint, demo_data, tmp_path):
    # batch 7 does not split evenly: the ranks train on 4 and 3 samples.
    cfg = train_config(
        tiny_checkpoint("qwen2_vl"), demo_data, budget={"steps": STEPS, "batch_size": 7, "max_new_tokens": 8}
    )
    cfg["lora"] = {"vision": True, "projector": "full"}
    reference = _run(cfg, 1, tmp_path)
    one = reference["losses"]
    for strategy in ("ddp", "fsdp"):
        got = _run(cfg, 2, tmp_path, strategy)
        two = got["losses"]
        for balance in FINAL_BALANCES if strategy == "ddp" else ():
            seeds = [reference["finals"][f"{balance}/{s}"] for s in (0, 1, 2)]
            for m, name in enumerate(("cer", "iou")):
                spread = max(r[m] for r in seeds) - min(r[m] for r in seeds)
                diff = abs(got["finals"][f"{balance}/0"][m] - seeds[0][m])
                print(
                    f"{balance} final {name}: 2 workers vs 1 differ by {diff:.4f}, seeds spread {spread:.4f}"
                )
                assert diff <= spread, (balance, name, got["finals"], seeds)
        if strategy == "fsdp":  # each rank holds the shards the estimate says, to the byte
            assert got["held"] == [_estimated_shards(cfg)] * 2, (got["held"], _estimated_shards(cfg))
        for balance in BALANCES if strategy == "ddp" else SHARDED_BALANCES:
            assert len(one[balance]) == len(two[balance]) == STEPS
            worst = max(abs(a - b) for a, b in zip(one[balance], two[balance], strict=True))
            print(f"{strategy} {balance}: largest per-step loss difference over {STEPS} steps {worst:.2e}")
            assert worst < 1e-5, (strategy, balance, worst, one[balance], two[balance])
            # The runs trained: the loss moved (a run that did not step would also agree).
            assert one[balance][0] != one[balance][-1]


def _sweep(tmp_path: Path, ckpt: Path, data: Path, search: dict | None = None, **sections) -> Path:
    """A sweep of 2-worker trials on the tiny checkpoint."""
    path = sweep_cfg(tmp_path, ckpt, data, **(search or {}))
    edit_yaml(path, resources={"cpus_per_trial": 1, "train_workers": 2}, **sections)
    return path


@pytest.mark.fault
def test_a_rank_killed_mid_trial_fails_the_trial_with_the_reason_and_the_sweep_ends(
    ray_local, tmp_path, tiny_checkpoint, demo_data
):
    """One rank's process killed once the trial trains (the moment: its ranks' places are on
    the Optuna trial, reported with its first training-log row): the trial ends FAIL saying a
    train worker died (resources.retries: 0; with retries Tune runs it again), nothing stays
    RUNNING, the sweep returns, and no rank process is left."""
    path = _sweep(
        tmp_path,
        tiny_checkpoint("qwen2_vl"),
        demo_data,
        search={"trials": 1},
        budget={"steps": 3000, "eval_every": None},
    )
    edit_yaml(path, resources={"retries": 0})
    cfg, base_dir = load_sweep_config(path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    optuna.storages.RDBStorage(url)  # the schema made before the poller reads it
    killed: list[int] = []

    def kill_rank_1() -> None:
        while True:
            try:
                trials = optuna.load_study(study_name="t", storage=url).get_trials()
            except KeyError:  # the study is not created yet
                trials = []
            ranks = trials[0].user_attrs.get("rank_placement") if trials else None
            if ranks:
                pid = next(r["worker_pid"] for r in ranks if r["rank"] == 1)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.2)  # polling for the moment, not waiting for it to pass

    killer = threading.Thread(target=kill_rank_1, daemon=True)
    killer.start()
    run_sweep(cfg, base_dir, url, log=lambda _m: None)
    killer.join(timeout=1)
    assert killed, "the trial never reported where its ranks run"
    study = optuna.load_study(study_name="t", storage=url)
    check_invariants(study)
    (trial,) = study.get_trials()
    assert trial.state == TrialState.FAIL
    assert "a train worker of this trial died" in trial.user_attrs["error"], trial.user_attrs["error"]
    assert trial.user_attrs["world_size"] == 2
    ranks = trial.user_attrs["rank_placement"]
    assert not [r for r in ranks if psutil.pid_exists(r["worker_pid"])], "a rank process is left"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("strategy", "model"),
    [("fsdp", {}), ("ddp", {"quantization": {"bits": 4}, "gradient_checkpointing": True})],
    ids=["fsdp", "ddp-qlora-checkpointing"],
)
def test_a_multi_worker_sweep_fails_a_diverging_trial_and_stores_a_whole_adapter(
    ray_local, tmp_path, tiny_checkpoint, demo_data, strategy, model
):
    """Through the sweep itself (run_sweep, Ray Train, the engine on each rank): a point
    whose loss diverges fails with the rank's reason, not retried; the next trial
    completes with world_size 2, and its adapter, written once by the main rank (with
    fsdp gathered from the shards first), holds whole LoRA factors of the trial's rank."""
    from safetensors.torch import load_file

    path = _sweep(
        tmp_path,
        tiny_checkpoint("qwen2_vl"),
        demo_data,
        search={"trials": 2, "warm_start": [{"params": {"lr_llm": 1e30, "lora_r": 2}}]},
        model=model,
    )
    edit_yaml(path, resources={"strategy": strategy})
    cfg, base_dir = load_sweep_config(path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    run_sweep(cfg, base_dir, url, log=lambda _m: None)
    study = optuna.load_study(study_name="t", storage=url)
    check_invariants(study)
    diverged, trained = study.get_trials()
    assert diverged.state == TrialState.FAIL
    assert diverged.user_attrs["error"].startswith("rank 0: FloatingPointError: training loss is nan")
    assert "worker_restarts" not in diverged.user_attrs  # a trial's own error is not retried
    assert trained.state == TrialState.COMPLETE and trained.user_attrs["world_size"] == 2
    adapters = list((tmp_path / "runs").glob("trial-*/adapter/adapter_model.safetensors"))
    assert [a.parents[1].name for a in adapters] == ["trial-0001"], adapters
    # Stored once: every file in the store is one the trained trial links, each once.
    links = [k for k in trained.system_attrs if k.startswith("artifacts:")]
    assert links and len(links) == len(list((tmp_path / "db-artifacts").iterdir()))
    factors = {k: v for k, v in load_file(adapters[0]).items() if "lora_A" in k}
    assert factors and all(v.shape[0] == trained.params["lora_r"] for v in factors.values())
