"""The failure classes (vlsweep.search.failures): how a Ray worker failure is classed and
each class held to its own cap. The real failures run in test_faults.py (worker death on
local Ray) and test_cluster_faults.py (node loss and preemption on a two-node cluster)."""

from __future__ import annotations

from ray.exceptions import ActorDiedError

from vlsweep.search import failures


def test_a_preempted_actor_is_node_loss_whatever_the_nodes(monkeypatch):
    monkeypatch.setattr(failures, "dead_nodes", lambda: {})
    preempted = ActorDiedError()
    preempted._preempted = True
    assert failures.cause(preempted, {"n1"})[0] == failures.NODE_LOSS
    # Inside a multi-worker trial's error, as its cause.
    wrapped = RuntimeError("a train worker of this trial died")
    wrapped.__cause__ = preempted
    assert failures.cause(wrapped, set())[0] == failures.NODE_LOSS


def test_a_dead_node_is_node_loss_and_a_live_one_worker_death(monkeypatch):
    monkeypatch.setattr(failures, "dead_nodes", lambda: {"gone": "node died"})
    died = ActorDiedError()
    assert failures.cause(died, {"gone"})[0] == failures.NODE_LOSS
    assert failures.cause(died, {"alive", "gone"})[0] == failures.NODE_LOSS  # a rank's node
    assert failures.cause(died, {"alive"})[0] == failures.WORKER_DEATH
    assert failures.cause(None, set())[0] == failures.WORKER_DEATH


def test_each_class_has_its_own_cap_and_tune_gets_their_sum():
    ledger = failures.Ledger(retries=1, node_loss_retries=2)
    assert failures.tune_max_failures(1, 2) == 3
    for _ in range(2):
        ledger.add("t", failures.NODE_LOSS)
    ledger.add("t", failures.WORKER_DEATH)
    assert not ledger.over("t", failures.NODE_LOSS) and not ledger.over("t", failures.WORKER_DEATH)
    ledger.add("t", failures.NODE_LOSS)
    assert ledger.over("t", failures.NODE_LOSS) and not ledger.over("t", failures.WORKER_DEATH)
    assert ledger.reason("t", failures.NODE_LOSS, "node n1 died") == (
        "node loss 3 times, more than resources.node_loss_retries: 2 allows; the last: node n1 died"
    )
    assert not ledger.over("other", failures.WORKER_DEATH)


def test_a_worker_ray_lost_touch_with_waits_for_the_gcs_verdict_on_its_node(monkeypatch):
    """ActorUnavailableError arrives before the GCS has failed the node's health checks:
    node loss once the node is listed dead, worker death if it stays alive."""
    monkeypatch.setattr(failures, "NODE_VERDICT_SECONDS", 5.0)
    monkeypatch.setattr(failures.time, "sleep", lambda _s: None)
    looks = iter([{}, {}, {}, {"n2": "node died"}])
    monkeypatch.setattr(failures, "dead_nodes", lambda: next(looks, {"n2": "node died"}))
    cut_off = RuntimeError("ActorUnavailableError: The actor is temporarily unavailable: Socket closed")
    assert failures.cause(cut_off, {"n2"}) == (failures.NODE_LOSS, "node died")
    clock = iter(range(100))
    monkeypatch.setattr(failures.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(failures, "dead_nodes", lambda: {})
    assert failures.cause(cut_off, {"n2"}) == (failures.WORKER_DEATH, "worker died")


def test_a_node_the_gcs_records_as_drained_for_preemption_is_a_preemption(monkeypatch):
    """The trial's error may be Ray's "unavailable" one, without the preempted mark: the
    node's own death record says it."""
    monkeypatch.setattr(failures, "dead_nodes", lambda: {"n2": "preempted"})
    cut_off = RuntimeError("ActorUnavailableError: The actor is temporarily unavailable: Socket closed")
    assert failures.cause(cut_off, {"n2"}) == (failures.NODE_LOSS, "preempted")
