"""Forgetting: how far a fine-tune's answers on the retention set drift from the base's.

forgetting = KL(base || fine-tuned), the mean over the answer tokens of the retention set
(``data.retain``: samples the base model already answers) of the KL divergence between the
two models' next-token distributions, teacher-forced on the reference answers.

The base's distributions are computed once per base model and retention set, not per
trial, and kept on disk (``<cache>/retain/<fingerprint>.pt``): a sweep's trials on one
machine share them. Each keeps the base's ``TOPK`` most likely tokens and the rest of the
probability mass as one bucket, so the stored reference is small for a 150k vocabulary;
the KL is then that of the two distributions over those ``TOPK + 1`` outcomes, which is at
most the full KL (merging outcomes never raises a KL divergence) and equal to it when the
base puts its mass on few tokens, as it does on answers it already knows.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlsweep.cache import cache_dir
from vlsweep.trials.batching import IGNORE

TOPK = 20
_MIN = 1e-12
# Bumped when what is stored changes: old files are never read.
FORMAT = 2  # 2: a half-dtype base is run under autocast


@dataclass
class Reference:
    """The base's top-k log-probabilities and their token ids, one row per answer token of
    the retention set, in sample order."""

    logp: torch.Tensor  # (tokens, TOPK), float32
    ids: torch.Tensor  # (tokens, TOPK), int64


def answer_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-softmax of the logits that predict each answer token (labels != IGNORE),
    rows in sample-major order: (tokens, vocab), float32."""
    mask = labels[:, 1:] != IGNORE
    return torch.log_softmax(logits[:, :-1][mask].float(), dim=-1)


def reference_of(log_probs: torch.Tensor, k: int = TOPK) -> Reference:
    top = log_probs.topk(min(k, log_probs.shape[-1]), dim=-1)
    return Reference(logp=top.values.cpu(), ids=top.indices.cpu())


def kl_to_reference(log_probs: torch.Tensor, ref: Reference) -> torch.Tensor:
    """Per-token KL(base || fine-tuned) over the reference's top-k tokens and the rest."""
    p_logp = ref.logp.to(log_probs.device)
    q_logp = log_probs.gather(-1, ref.ids.to(log_probs.device))
    p = p_logp.exp()
    p_rest = (1 - p.sum(-1)).clamp(min=_MIN)
    q_rest = (1 - q_logp.exp().sum(-1)).clamp(min=_MIN)
    head = (p * (p_logp - q_logp)).sum(-1)
    rest = p_rest * (p_rest.log() - q_rest.log())
    return (head + rest).clamp(min=0.0)


def fingerprint(source: str, model_cfg: Any, samples: Iterable[dict[str, Any]]) -> str:
    """What the base's distributions on the retention set depend on: the model (its name,
    revision, dtype and, for a local checkpoint, its files' sizes and times) and the
    retention samples as encoded (prompt and answer token ids)."""
    h = hashlib.sha256()
    files: list[Any] = []
    path = Path(source)
    if path.is_dir():
        files = sorted(
            (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file()
        )
    head = {
        "format": FORMAT,
        "topk": TOPK,
        "source": source,
        "revision": model_cfg.revision,
        "dtype": model_cfg.dtype,
        "files": files,
    }
    h.update(json.dumps(head, sort_keys=True).encode())
    for s in samples:
        h.update(json.dumps(s, sort_keys=True).encode())
    return h.hexdigest()[:24]


def cached_reference(key: str, compute: Callable[[], Reference], log: Callable[[str], None]) -> Reference:
    """The base's reference for ``key``: from this process, from disk, or computed now
    (and saved, written to a temporary name first so a reader never sees half a file)."""
    if key in _MEMORY:
        return _MEMORY[key]
    path = cache_dir() / "retain" / f"{key}.pt"
    if path.is_file():
        data = torch.load(path, map_location="cpu", weights_only=True)
        ref = Reference(logp=data["logp"], ids=data["ids"])
        log(f"retention reference: the base model's answers from {path}")
    else:
        ref = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        # A name of this process's own: trials of one sweep run seeded alike, so a name
        # drawn from torch's (seeded) RNG was the same in two trials writing at once.
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        torch.save({"logp": ref.logp, "ids": ref.ids}, tmp)
        tmp.replace(path)
        log(f"retention reference: the base model's answers computed once, kept in {path}")
    _MEMORY[key] = ref
    return ref


_MEMORY: dict[str, Reference] = {}
