"""What a multi-worker sweep is told and asks for, without starting Ray Train: the config's
checks, the resource check counting N workers a trial, the split of a batch, the
estimate per rank, how a dead rank is told from a rank's error, and what the searcher
records of a trial's ranks."""

from __future__ import annotations

import json

import optuna
import pytest
import torch

from tests.support.sweeps import edit_yaml, sweep_cfg
from vlsweep.errors import UserInputError
from vlsweep.search import backend, train_workers
from vlsweep.search.config import load_sweep_config
from vlsweep.trials.ranks import Ranks


def _load(tmp_path, tiny_checkpoint, demo_data, **sections):
    path = sweep_cfg(tmp_path, tiny_checkpoint("qwen2_vl"), demo_data)
    edit_yaml(path, **sections)
    return load_sweep_config(path)


def _problems(tmp_path, tiny_checkpoint, demo_data, **sections) -> str:
    with pytest.raises(UserInputError) as err:
        _load(tmp_path, tiny_checkpoint, demo_data, **sections)
    return "\n".join(err.value.problems)


def test_more_than_one_gpu_per_trial_points_to_train_workers(tmp_path, tiny_checkpoint, demo_data):
    said = _problems(tmp_path, tiny_checkpoint, demo_data, resources={"gpus_per_trial": 2})
    assert "resources.gpus_per_trial" in said and "train_workers: 2" in said, said


def test_each_train_worker_needs_a_sample_of_the_batch(tmp_path, tiny_checkpoint, demo_data):
    said = _problems(tmp_path, tiny_checkpoint, demo_data, resources={"train_workers": 5})
    assert "resources.train_workers (5) is above budget.batch_size (4)" in said, said


@pytest.mark.parametrize(
    ("sections", "needle"),
    [
        ({"resources": {"strategy": "fsdp"}}, "set resources.train_workers to 2 or more"),
        (
            {"resources": {"strategy": "fsdp", "train_workers": 2}, "model": {"quantization": {"bits": 4}}},
            "a quantized base (model.quantization) is not sharded",
        ),
        (
            {
                "resources": {"strategy": "fsdp", "train_workers": 2},
                "space": {"loss_balance": {"type": "categorical", "choices": ["static", "upgrad"]}},
            },
            "loss_balance upgrad combines each task's whole gradient",
        ),
    ],
)
def test_fsdp_refuses_what_it_cannot_shard(tmp_path, tiny_checkpoint, demo_data, sections, needle):
    said = _problems(tmp_path, tiny_checkpoint, demo_data, **sections)
    assert "resources.strategy: fsdp" in said and needle in said, said


def test_a_valid_multi_worker_config_gives_ray_train_each_workers_share(tmp_path, tiny_checkpoint, demo_data):
    cfg, _ = _load(
        tmp_path,
        tiny_checkpoint,
        demo_data,
        resources={"train_workers": 2, "cpus_per_trial": 2, "gpus_per_trial": 1, "memory_gb_per_trial": 8},
    )
    scaling = train_workers.scaling(cfg, "/shared/ray")
    assert scaling == {
        "num_workers": 2,
        "resources_per_worker": {"CPU": 2, "GPU": 1, "memory": 8 * 2**30},
        "strategy": "ddp",
        "storage_path": "/shared/ray",
    }
    one, _ = _load(tmp_path, tiny_checkpoint, demo_data)
    assert train_workers.scaling(one, "/x") is None  # one worker: the trial actor trains itself


def test_the_cluster_must_hold_all_of_a_trials_workers_at_once():
    nodes = [{"Resources": {"CPU": 1.0}}, {"Resources": {"CPU": 1.0}}]
    # Two 1-CPU workers fit on two 1-CPU nodes (one each) ...
    assert backend._check_workers_fit({"CPU": 1.0}, 2, nodes, scaling=False, log=print) is False
    # ... three do not: an error naming the key, the request and what the cluster holds.
    with pytest.raises(UserInputError) as err:
        backend._check_workers_fit({"CPU": 1.0}, 3, nodes, scaling=False, log=print)
    (line,) = err.value.problems
    assert line.startswith("resources.train_workers: each trial asks for 3 train workers of 1 CPU each")
    assert "holds 2 such workers at once (2 nodes" in line, line
    # With an autoscaler it is a visible wait instead.
    said: list[str] = []
    assert backend._check_workers_fit({"CPU": 1.0}, 3, nodes, scaling=True, log=said.append) is True
    assert "the cluster's autoscaler may add nodes" in said[0]


@pytest.mark.parametrize(("n", "world"), [(7, 2), (8, 2), (8, 3), (3, 3)])
def test_the_ranks_split_a_batch_into_contiguous_shares_that_cover_it(n, world):
    batch = list(range(100, 100 + n))
    shares = [Ranks(rank, world).share(batch) for rank in range(world)]
    assert [i for s in shares for i in s] == batch
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_one_rank_means_are_the_engines_own():
    sums, counts = torch.tensor([6.0, 0.0]), torch.tensor([3.0, 0.0])
    means, got = Ranks().global_means(sums, counts)
    assert means.tolist() == [2.0, 0.0] and got is counts


def test_a_dead_rank_is_told_from_a_ranks_error():
    from ray.exceptions import ActorDiedError
    from ray.train import WorkerGroupError

    dead = WorkerGroupError("x", {0: RuntimeError("Connection reset by peer"), 1: ActorDiedError()})
    assert train_workers.rank_died(dead).startswith("rank 1: ActorDiedError")
    raised = WorkerGroupError("x", {0: FloatingPointError("training loss is nan at step 3")})
    assert train_workers.rank_died(raised) is None
    assert train_workers.trial_error(raised) == "rank 0: FloatingPointError: training loss is nan at step 3"


def test_the_searcher_records_a_trials_world_size_and_ranks():
    from vlsweep.search.searcher import OptunaAskTellSearcher
    from vlsweep.spaces import parse_space

    study = optuna.create_study(directions=["minimize", "maximize"])
    study.set_metric_names(["cer", "iou"])
    space, _ = parse_space(None)
    searcher = OptunaAskTellSearcher(study, space, {}, ["cer", "iou"], 10)
    searcher.suggest("a")
    ranks = [{"rank": 0, "node_id": "n0", "worker_pid": 1}, {"rank": 1, "node_id": "n1", "worker_pid": 2}]
    searcher.on_trial_result(
        "a", {"steps": 1, "node_id": "n0", "world_size": 2, "rank_placement": json.dumps(ranks)}
    )
    attrs = study.trials[0].user_attrs
    assert attrs["world_size"] == 2 and attrs["rank_placement"] == ranks


def test_what_ended_a_ray_train_run_decides_retry_or_fail():
    """Deaths (a rank's, the controller's, a preemption) are re-run by Tune; a rank's own
    error, or the controller's, is the trial's."""
    from ray.exceptions import ActorDiedError
    from ray.train import ControllerError
    from ray.train.v2.api.exceptions import PreemptionError

    assert train_workers.rank_died(ActorDiedError()).startswith("Ray Train's controller: ActorDiedError")
    preempted = PreemptionError.__new__(PreemptionError)  # (its constructor wants Ray's own record)
    Exception.__init__(preempted, "Training was interrupted by node preemption (preempted_ranks=[1])")
    assert train_workers.rank_died(preempted).startswith("Training was interrupted by node preemption")
    assert train_workers.rank_died(ControllerError(RuntimeError("a callback raised"))) is None
    assert train_workers.rank_died(ValueError("ours")) is None
