"""The trial's data as another trainer reads it: each sample a single-turn chat (the
question the trial asked, about one image, and the answer it trained toward), the system
prompt the checkpoint's own template adds, the task mix and per-token loss scales."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlsweep.params import TASKS, TrialParams


@dataclass
class Turn:
    """One sample as a single-turn chat another trainer reads: the question the trial asked
    (the config's prompt for its task) about one image, and the answer it trained toward
    (boxes in the model family's format)."""

    task: str
    image: str  # absolute path
    question: str
    answer: str
    answer_tokens: int  # the answer's tokens with the end of turn, as the trial's labels count


def turns(cfg: Any) -> tuple[dict[str, list[Turn]], str | None]:
    """The trial's training and validation samples as chat turns, encoded by the model's
    own processor exactly as the trial encodes them (no model weights are loaded), and
    the system prompt its chat template puts before them (see ``chat_system``)."""
    from vlsweep.trials import Encoder, load_data, load_processing

    data = load_data(cfg.data, Path.cwd())
    proc = load_processing(cfg.model)
    encoder = Encoder(proc.processor, proc.family, proc.codec, {t: cfg.data.prompt(t) for t in TASKS})
    out: dict[str, list[Turn]] = {}
    for split, records in (("train", data.train), ("val", data.val)):
        rows = []
        for rec in records:
            enc = encoder.encode(rec)
            n_answer = enc.full["input_ids"].shape[1] - enc.prompt["input_ids"].shape[1]
            image = str(Path(rec.image).resolve())
            rows.append(Turn(rec.task, image, encoder.question(rec), enc.answer, n_answer))
        out[split] = rows
    return out, chat_system(proc.processor)


_MARK = "\x00vlsweep-system\x00"


def chat_system(processor: Any) -> str | None:
    """The system prompt the checkpoint's chat template adds to a conversation that has
    none ("" for none), or None without a chat template.

    The trial asks each question with no system message, as the model's own template
    renders it; LLaMA-Factory's and ms-swift's templates add their own default system
    prompt (Qwen2-VL's "You are a helpful assistant."), which a checkpoint's template may
    not. The exports set the tools' system prompt to this, so training sees the prompts
    the trial saw."""
    if not getattr(processor, "chat_template", None):
        return None
    user = [{"role": "user", "content": [{"type": "text", "text": "q"}]}]
    plain = processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    marked = processor.apply_chat_template(
        [{"role": "system", "content": [{"type": "text", "text": _MARK}]}, *user],
        add_generation_prompt=True,
        tokenize=False,
    )
    if _MARK not in marked:
        return None  # the template drops system messages: nothing to match
    head, tail = marked.split(_MARK, 1)
    if plain.startswith(head) and plain.endswith(tail) and len(plain) >= len(head) + len(tail):
        return plain[len(head) : len(plain) - len(tail)]
    return ""  # no system block when none is given


def task_mix(samples: list[Turn], params: TrialParams) -> dict[str, float]:
    """The trial's task sampling probabilities (``mix_temperature`` over the task sizes)."""
    from vlsweep.trials import task_probabilities

    counts: dict[str, int] = {}
    for t in samples:
        counts[t.task] = counts.get(t.task, 0) + 1
    return task_probabilities(counts, params.mix_temperature)


def token_loss_scales(
    samples: list[Turn], probs: dict[str, float], weights: dict[str, float]
) -> dict[str, float]:
    """Per-token loss scales that give each task the weight the trial gave it.

    The trial weights each task's *mean* loss (``weight_ocr`` and 1 - it); a trainer that
    averages scaled token losses over the batch weights a task by its scale times its
    share of the answer tokens. That share is the task's sampling probability times its
    mean answer length, so the scale is the weight over the share (all scales are 1 when
    the weights equal the shares)."""
    tokens = {t: 0 for t in probs}
    counts = {t: 0 for t in probs}
    for s in samples:
        tokens[s.task] += s.answer_tokens
        counts[s.task] += 1
    mean = {t: tokens[t] / max(counts[t], 1) for t in probs}
    total = sum(probs[t] * mean[t] for t in probs)
    return {t: weights[t] / (probs[t] * mean[t] / total) for t in probs}


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def chat(t: Turn, loss_scale: float | None = None) -> dict[str, Any]:
    """A sample as LLaMA-Factory's sharegpt and ms-swift's messages formats both read it."""
    answer: dict[str, Any] = {"role": "assistant", "content": t.answer}
    if loss_scale is not None:
        answer["loss_scale"] = round(loss_scale, 6)
    return {"messages": [{"role": "user", "content": "<image>" + t.question}, answer], "images": [t.image]}
