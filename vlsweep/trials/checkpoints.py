"""A trial's trainable state at a step, and the trial continued from it.

``budget.checkpoint_steps: K`` makes the engine hand ``capture``'s state to its caller
every K steps (the sweep's worker stores it as a Ray Tune checkpoint); a trial given
that state back (``run_trial(resume=...)``) continues at the next step and ends where
the uninterrupted trial ends, bit for bit on the CPU.

What is kept: every trained parameter (the LoRA factors, a module trained whole), the
optimizer's moments, the schedule's position, a float16 loss scaler, the loss balance's
own state, the RNG states (torch's, CUDA's, Python's: dropout draws from them), and the
training log, the last evaluation and the timings so far. What is not kept because it is
made again alike: the frozen base, the adapter's layout (attached as the trial's seed
made it), the encoded data and the retention reference. The data order is drawn again:
the task mixer is replayed for the steps already done (``replay``), which costs no model
time and needs none of the mixer's private state.

Written here rather than with ``torch.distributed.checkpoint`` or accelerate's
``save_state``: a one-worker trial's trained state is megabytes, kept whole in one file,
and both of those bring their own layout of directories for what is one dict here.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import torch

from vlsweep.trials.data import TaskMixer

STATE_FILE = "trial_state.pt"
FORMAT = 1  # the layout of the state below; a checkpoint of another one is not resumed


def capture(trainer: Any, progress: Any, step: int) -> dict[str, Any]:
    """The trial's state after ``step`` (its update, and its evaluation when it had one)."""
    state: dict[str, Any] = {
        "format": FORMAT,
        "step": step,
        "trained": {
            name: p.detach().cpu().clone() for name, p in trainer.model.named_parameters() if p.requires_grad
        },
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "balance": trainer.balance.state(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
        },
        "progress": {
            "train_seconds": progress.train_seconds,
            "eval_seconds": progress.eval_seconds,
            "metrics": dict(progress.metrics),
            "log_rows": list(progress.log_rows),
        },
    }
    # The optimizer's state is copied now: it is stepped again before the caller writes it.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    # On the CPU: a copy on the GPU would double the optimizer's state there for a moment.
    copied: dict[str, Any] = torch.load(buffer, weights_only=False, map_location="cpu")
    return copied


def restore(trainer: Any, progress: Any, state: dict[str, Any]) -> int:
    """Put ``state`` back into a trainer attached as the trial first was; returns the step
    it was taken after (the trial continues at the next one)."""
    if state.get("format") != FORMAT:
        raise ValueError(f"a trial checkpoint of format {state.get('format')!r}, not {FORMAT}")
    trained = state["trained"]
    params = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    if set(params) != set(trained):
        missing, extra = sorted(set(params) - set(trained)), sorted(set(trained) - set(params))
        raise ValueError(
            f"the checkpoint's trained parameters differ from the trial's: {missing[:3]} {extra[:3]}"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(trained[name])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    if trainer.scaler is not None and state["scaler"] is not None:
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.balance.load_state(state["balance"])
    trainer.steps_done = int(state["step"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate(rng["python"])
    saved = state["progress"]
    progress.train_seconds, progress.eval_seconds = saved["train_seconds"], saved["eval_seconds"]
    progress.metrics, progress.log_rows = dict(saved["metrics"]), list(saved["log_rows"])
    return int(state["step"])


def replay(mixer: TaskMixer, steps: int, batch_size: int) -> None:
    """Draw the batches of the first ``steps`` steps again, so that the mixer stands where
    it stood after them."""
    for step in range(1, steps + 1):
        mixer.batch(batch_size, step)


def save_checkpoint(state: dict[str, Any], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATE_FILE
    torch.save(state, path)
    return path


def load_checkpoint(directory: Path) -> dict[str, Any]:
    # Not weights_only: the state holds Python's RNG state and FAMO's object, written by
    # this trial's own worker into the sweep's storage.
    loaded: dict[str, Any] = torch.load(Path(directory) / STATE_FILE, weights_only=False, map_location="cpu")
    return loaded
