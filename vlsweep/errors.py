"""User-facing errors: bad config, bad data, bad arguments. The CLI maps them to exit code 2."""

from __future__ import annotations

from typing import Any


class UserInputError(Exception):
    """One or more problems with what the user gave us, each a self-contained line.

    Each line names where the problem is (a config field or a file:line), the rule that is
    broken with the offending value, and what to do about it.
    """

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


# What shrinks a trial's memory by its base: said by every out-of-memory message and refusal.
QUANTIZE_HINT = "quantize the base (model.quantization: {bits: 4})"


class TrialOutOfMemory(RuntimeError):
    """A trial ran out of accelerator memory: where (the step, training or evaluating, with
    which batch size) and what to change. Raised once the trial's own tensors are out of
    scope, so the worker can free the memory for its next trial."""

    def __init__(self, *, step: int, phase: str, batch: int, detail: str, quantized: bool = False):
        self.step, self.phase, self.batch, self.detail = step, phase, batch, detail
        self.quantized = quantized
        quantize = "" if quantized else f" or {QUANTIZE_HINT}"
        if phase == "evaluation":
            during = f"evaluating at step {step} with eval batch {batch}; lower budget.eval_batch_size"
        elif phase == "setup":
            during = "attaching the adapter, before step 1; lower lora_r" + (
                ", train fewer modules" + quantize if quantize else " or train fewer modules"
            )
        else:
            during = (
                f"at step {step} with batch {batch}; lower budget.batch_size, set "
                f"model.gradient_checkpointing: true{quantize}"
            )
        super().__init__(
            f"out of GPU memory {during}, or give each trial a larger share of a GPU "
            f"(resources.gpus_per_trial, up to 1) or more GPUs (resources.train_workers, one GPU "
            f"each; strategy: fsdp shards the model too) ({detail})"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # keyword-only: pickled (to a pool's parent) by hand
        return (_trial_out_of_memory, (self.step, self.phase, self.batch, self.detail, self.quantized))


def _trial_out_of_memory(step: int, phase: str, batch: int, detail: str, quantized: bool) -> TrialOutOfMemory:
    return TrialOutOfMemory(step=step, phase=phase, batch=batch, detail=detail, quantized=quantized)


class SweepStopped(Exception):
    """The sweep ended early for a reason the user must see; the CLI exits with ``exit_code``."""

    exit_code = 1


class SweepFailed(SweepStopped):
    """Trials keep failing the same way (fail fast): running on would burn the cluster."""


class SweepInterrupted(SweepStopped):
    """Ctrl-C or SIGTERM: the sweep stopped cleanly and ``vlsweep resume`` continues it."""

    exit_code = 130
