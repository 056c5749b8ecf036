"""Why a trial stopped short, in the three classes vlsweep names alike in code, docs and
``vlsweep status``:

- **trial error**: the trial itself raised (bad values, NaN, out of memory). The worker
  reports it (``worker.ERROR_KEY``) and the trial is FAIL with the reason; never retried.
- **worker death**: the trial's Ray worker (or a train worker of a multi-worker trial)
  died on a node that is still alive. Ray Tune runs the trial again, up to
  ``resources.retries`` times.
- **node loss or preemption**: the node the trial ran on died or was drained by its
  cloud (``ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION``, a spot instance
  reclaimed). The trial runs again elsewhere without spending ``resources.retries``, up
  to ``resources.node_loss_retries`` times.

Each run again continues from the trial's last checkpoint when ``budget.checkpoint_steps``
is set. The counts are recorded on the Optuna trial (``worker_restarts``,
``node_losses``); ``vlsweep status`` shows them.

Ray Tune itself only sets preemptions apart (it does not count them as failures, with no
limit); a killed node counts as any failure. So Tune's own limit is set to the sum of
both (``tune_max_failures``) and ``Ledger`` applies each class's cap: a trial over one is
FAIL with the reason, and its run again is stopped at its first report.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

# How long a worker Ray lost touch with waits for the GCS to say whether its node died:
# Ray's own health checks of a node (every 3 s, 5 failures by default) rule on a killed
# node in about 15 s, on a host gone silent later (each check also waits for its
# timeout). A cluster with other health-check settings sets VLSWEEP_NODE_VERDICT_SECONDS.
NODE_VERDICT_SECONDS = float(os.environ.get("VLSWEEP_NODE_VERDICT_SECONDS", "60"))

TRIAL_ERROR = "trial error"
WORKER_DEATH = "worker death"
NODE_LOSS = "node loss"

# The Optuna trial's user attr each class's count goes to, and the config key capping it.
COUNT_ATTR = {WORKER_DEATH: "worker_restarts", NODE_LOSS: "node_losses"}
CAP_KEY = {WORKER_DEATH: "resources.retries", NODE_LOSS: "resources.node_loss_retries"}


def tune_max_failures(retries: int, node_loss_retries: int) -> int:
    """Ray Tune's FailureConfig limit: both classes' runs again together (Ledger caps each)."""
    return retries + node_loss_retries


def cause(
    error: BaseException | None, nodes: Iterable[str], waiting: Callable[[], None] | None = None
) -> tuple[str, str]:
    """The class and, in words, what happened: ``preempted`` (drained for preemption),
    ``node died`` or ``worker died``. ``waiting`` is called every few seconds while the
    GCS is waited for (the driver keeps its lease alive)."""
    nodes = set(nodes)
    if _preempted(error):
        return NODE_LOSS, "preempted"
    gone = _gone(nodes)
    if gone:
        return NODE_LOSS, gone
    if _says_node_died(error):
        return NODE_LOSS, "node died"
    if nodes and _connection_lost(error):
        # The worker was cut off, not reported dead: its node may be going, which the GCS
        # says once its health checks of the node have failed. Wait for that verdict.
        deadline = time.monotonic() + NODE_VERDICT_SECONDS
        polls = 0
        while time.monotonic() < deadline:
            gone = _gone(nodes)
            if gone:
                return NODE_LOSS, gone
            polls += 1
            if waiting is not None and polls % 10 == 0:
                waiting()
            time.sleep(0.5)
    return WORKER_DEATH, "worker died"


def _gone(nodes: set[str]) -> str:
    """How one of ``nodes`` went, as the GCS recorded it ("preempted" for a node drained
    for preemption, "node died" otherwise), or "" while all are alive."""
    dead = dead_nodes()
    reasons = [dead[n] for n in nodes if n in dead]
    if not reasons:
        return ""
    return "preempted" if "preempted" in reasons else "node died"


def _connection_lost(error: Any) -> bool:
    """Ray's errors for a worker it lost touch with (rather than one it saw die)."""
    text = f"{type(error).__name__}: {error}"
    return any(
        hint in text
        for hint in ("ActorUnavailableError", "temporarily unavailable", "Socket closed", "HealthCheck")
    )


def _says_node_died(error: Any) -> bool:
    """Ray's text for an actor whose node died (the GCS may not list the node as dead yet
    when the trial's error arrives)."""
    text = str(error or "")
    return "node has died" in text or "node died" in text.lower() or "NodeDiedError" in text


def _preempted(error: BaseException | None) -> bool:
    """Ray's own mark of an actor whose node was drained for preemption, on the error or
    on its cause (a Ray Train worker's, inside the trial's)."""
    seen = 0
    while error is not None and seen < 8:
        if getattr(error, "preempted", False):
            return True
        if "PreemptionError" in type(error).__name__ or "DRAIN_PREEMPTED" in str(error):
            return True
        error = getattr(error, "cause", None) or getattr(error, "__cause__", None)
        seen += 1
    return False


def dead_nodes() -> dict[str, str]:
    """The Ray cluster's nodes that are no longer alive, as the GCS knows them: id ->
    "preempted" (drained for preemption before it went) or "node died"."""
    import ray

    out = {}
    for n in ray.nodes():
        if not n.get("Alive", True):
            reason = str(n.get("DeathReason", "")) + " " + str(n.get("DeathReasonMessage", ""))
            preempted = "PREEMPT" in reason.upper() or str(n.get("DeathReason")) == str(_PREEMPTED_REASON)
            out[n["NodeID"]] = "preempted" if preempted else "node died"
    return out


# Ray's NodeDeathInfo reason for a node drained for preemption (gcs.proto), as a number.
_PREEMPTED_REASON = 3


@dataclass
class Ledger:
    """Each trial's runs again, by class, against the caps: what the driver records on the
    trial and whether the trial may run once more."""

    retries: int
    node_loss_retries: int
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, trial_id: str, kind: str) -> int:
        counts = self.counts.setdefault(trial_id, {})
        counts[kind] = counts.get(kind, 0) + 1
        return counts[kind]

    def cap(self, kind: str) -> int:
        return self.retries if kind == WORKER_DEATH else self.node_loss_retries

    def over(self, trial_id: str, kind: str) -> bool:
        return self.counts.get(trial_id, {}).get(kind, 0) > self.cap(kind)

    def reason(self, trial_id: str, kind: str, detail: str) -> str:
        n = self.counts.get(trial_id, {}).get(kind, 0)
        return (
            f"{kind} {n} time{'s' if n != 1 else ''}, more than {CAP_KEY[kind]}: {self.cap(kind)} "
            f"allows; the last: {detail}"
        )


def error_line(error: Any) -> str:
    """The last line of Ray's error text: what a user reads first."""
    text = str(error).strip() if error is not None else ""
    return (text.splitlines() or ["(no message)"])[-1][:500]
