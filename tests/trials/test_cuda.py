"""On a real GPU: mixed precision, peak memory and a real out-of-memory error. Marked
``gpu`` (``pytest -m gpu`` on a machine with CUDA; skipped where there is none). What
runs without a GPU is tested elsewhere: the OOM path with torch's real error raised in
the training step (test_engine.py, tests/search/test_faults.py), autocast and the loss
scaler on the CPU (test_engine.py), the GPU ids Ray assigns (tests/search/test_gpu_ids.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support.helpers import train_config
from vlsweep.config import TrainConfig
from vlsweep.errors import TrialOutOfMemory
from vlsweep.params import TrialParams
from vlsweep.trials import load_base, load_data, run_trial

# Skipped where there is no CUDA device, with the reason (tests/conftest.py).
pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def on_gpu(tiny_checkpoint, demo_data):
    raw = train_config(tiny_checkpoint("qwen2_vl"), demo_data)
    raw["model"]["device"] = "cuda"
    cfg = TrainConfig.model_validate(raw)
    return cfg, load_data(cfg.data, Path("."))


def test_a_trial_on_a_gpu_trains_in_mixed_precision_and_records_its_peak_memory(on_gpu):
    cfg, data = on_gpu
    base = load_base(cfg.model)
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    assert base.model.dtype == expected
    result = run_trial(TrialParams(), cfg.budget, cfg=cfg, data=data, base=base)
    assert result["peak_gpu_memory_gb"] > 0
    assert 0.0 <= result["iou"] <= 1.0


def test_a_real_out_of_memory_error_fails_the_trial_and_frees_its_memory(on_gpu):
    cfg, data = on_gpu
    base = load_base(cfg.model)
    # What stays allocated once any matmul ran (cuBLAS's workspace) counts as before.
    (torch.ones(8, 8, device="cuda") @ torch.ones(8, 8, device="cuda")).sum().item()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    # Leave the trial almost nothing: hold all but 64 MiB of what the GPU has free.
    free, _ = torch.cuda.mem_get_info()
    hog = torch.empty(max(0, free - 64 * 2**20), dtype=torch.uint8, device="cuda")
    big = cfg.budget.model_copy(update={"batch_size": 64})
    try:
        with pytest.raises(TrialOutOfMemory, match=r"out of GPU memory (at step 1 with batch 64|evaluating)"):
            run_trial(TrialParams(), big, cfg=cfg, data=data, base=base)
    finally:
        del hog
    torch.cuda.empty_cache()
    assert torch.cuda.memory_allocated() <= before + 2**20, "the failed trial's tensors were kept"
    assert run_trial(TrialParams(), cfg.budget, cfg=cfg, data=data, base=base)["steps"] == cfg.budget.steps
