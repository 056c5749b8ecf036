"""The trial engine: one short multi-task LoRA fine-tune of a VLM, scored by the metrics
of ``vlsweep.metrics``.

This is the package's one front door: code outside ``vlsweep.trials`` imports from here,
never from its submodules. It imports neither Ray nor Optuna; the search drives it
through ``run_trial`` and a plain ``report(step, metrics)`` callback. The names load
lazily, so ``import vlsweep.trials`` does not import torch until one is used.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from vlsweep.lazy import lazy_exports
from vlsweep.params import TrialParams


class _OptionalKernelNote(logging.Filter):
    """Drops bitsandbytes' import-time warning that it could not fetch an optional CPU
    kernel from the Hugging Face Hub. On CPUs with AVX512-BF16 it tries at import (peft
    imports it whenever it is installed, quantized base or not); offline or with the
    repository untrusted it falls back to its own CPU kernel, which is the one tested here,
    and the warning asks for a ``pip install kernels`` that is already done: noise on every
    ``vlsweep validate`` with nothing for the user to do."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_OptionalKernelNote())

if TYPE_CHECKING:  # for type checkers; at run time __getattr__ below loads them
    from vlsweep.trials.batching import IGNORE, Encoder, collate  # noqa: F401
    from vlsweep.trials.checkpoints import load_checkpoint, save_checkpoint  # noqa: F401
    from vlsweep.trials.codecs import CODECS, BoxCodec  # noqa: F401
    from vlsweep.trials.data import (  # noqa: F401
        Record,
        StrategyMixer,
        TaskMixer,
        check_tasks,
        difficulty,
        load_records,
        task_probabilities,
    )
    from vlsweep.trials.engine import TrialData, load_data, run_trial, score  # noqa: F401
    from vlsweep.trials.families import FAMILIES, Family, family_for  # noqa: F401
    from vlsweep.trials.lora import layer_kind, peft_config, plan_lora  # noqa: F401
    from vlsweep.trials.losses import BALANCES, task_losses, weighted_sum  # noqa: F401
    from vlsweep.trials.memory import Estimate, data_shape, estimate, human_bytes  # noqa: F401
    from vlsweep.trials.modeling import (  # noqa: F401
        Base,
        Processing,
        check_model,
        load_base,
        load_processing,
        model_skeleton,
        module_groups,
        resolve_device,
        resolve_dtype,
        resolve_source,
    )
    from vlsweep.trials.pool import Loaded, base_pool, cached_base, cached_data, pooled  # noqa: F401
    from vlsweep.trials.ranks import Ranks  # noqa: F401

# Public name -> the submodule that defines it.
_EXPORTS = {
    "IGNORE": "batching",
    "Encoder": "batching",
    "collate": "batching",
    "CODECS": "codecs",
    "BoxCodec": "codecs",
    "Record": "data",
    "TaskMixer": "data",
    "StrategyMixer": "data",
    "difficulty": "data",
    "check_tasks": "data",
    "load_records": "data",
    "task_probabilities": "data",
    "TrialData": "engine",
    "load_data": "engine",
    "run_trial": "engine",
    "score": "engine",
    "FAMILIES": "families",
    "Family": "families",
    "family_for": "families",
    "peft_config": "lora",
    "plan_lora": "lora",
    "layer_kind": "lora",
    "BALANCES": "losses",
    "weighted_sum": "losses",
    "task_losses": "losses",
    "Base": "modeling",
    "check_model": "modeling",
    "load_base": "modeling",
    "Processing": "modeling",
    "load_processing": "modeling",
    "model_skeleton": "modeling",
    "module_groups": "modeling",
    "resolve_source": "modeling",
    "resolve_device": "modeling",
    "resolve_dtype": "modeling",
    "Loaded": "pool",
    "base_pool": "pool",
    "pooled": "pool",
    "cached_base": "pool",
    "cached_data": "pool",
    "Ranks": "ranks",
    "save_checkpoint": "checkpoints",
    "load_checkpoint": "checkpoints",
    "Estimate": "memory",
    "data_shape": "memory",
    "estimate": "memory",
    "human_bytes": "memory",
}
__all__ = ["TrialParams", *_EXPORTS]
__getattr__ = lazy_exports(__name__, _EXPORTS)
