"""The memory estimate (vlsweep/trials/memory.py, vlsweep/search/fit.py): its parts against
what a real trial allocates and saves, the space's corners, bitsandbytes' storage."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from vlsweep.search.fit import corners
from vlsweep.spaces import parse_space
from vlsweep.trials.memory import quantized_weight_bytes

BENCH = Path(__file__).parents[2] / "benchmarks" / "memory_estimate.py"


def _bench():
    spec = importlib.util.spec_from_file_location("memory_estimate", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["memory_estimate"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "case",
    [
        "qwen2_vl",
        "qwen2_vl+checkpointing",
        "llava",
        "llava+checkpointing",
        "qwen2_vl+4bit",
        "qwen2_vl+bfloat16",
    ],
)
def test_each_part_matches_what_a_real_trial_allocates(case):
    bench = _bench()
    result = bench.check(case, bench.CASES[case])
    assert bench.verdict({case: result}) == []
    for part in ("weights", "adapter", "gradients", "optimizer", "logits"):
        assert result["estimate_bytes"][part] == result["measured_bytes"][part] > 0, part


def test_corners_take_each_memory_parameter_at_its_ends():
    space, problems = parse_space(
        {
            "lora_r": {"type": "categorical", "choices": [8, 4, 32]},
            "lora_dropout": {"type": "float", "low": 0.0, "high": 0.1},
            "lr_llm": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        }
    )
    assert not problems
    smallest, largest = corners(space, {"lora.vision": False, "lora.projector": "frozen"})
    assert [(p.lora_r, p.lora_dropout) for p in smallest] == [(4, 0.0)]
    assert [(p.lora_r, p.lora_dropout) for p in largest] == [(32, 0.1)]


def test_corners_count_a_layout_rank_of_0_as_lora_r_and_the_costliest_balance():
    """lora_r_vision 0 means "as lora_r" (lora.plan_lora): with lora_r up to 64 the largest
    vision rank is 64, not the 32 of its choices; pcgrad keeps a gradient per task; without
    "all" each layer set is a candidate for the largest."""
    space, problems = parse_space(
        {
            "lora_r": {"type": "categorical", "choices": [8, 64]},
            "lora_r_vision": {"type": "categorical", "choices": [0, 4, 32]},
            "loss_balance": {"type": "categorical", "choices": ["static", "pcgrad", "famo"]},
            "lora_targets_llm": {"type": "categorical", "choices": ["attention", "mlp"]},
        }
    )
    assert not problems
    smallest, largest = corners(space, {"lora.vision": True, "lora.projector": "frozen"})
    assert {(p.lora_r, p.lora_r_vision) for p in smallest} == {(8, 4)}
    assert {(p.lora_r, p.lora_r_vision, p.loss_balance) for p in largest} == {(64, 0, "pcgrad")}
    assert sorted(p.lora_targets_llm for p in largest) == ["attention", "mlp"]


@pytest.mark.parametrize("double_quant", [True, False])
def test_4bit_bytes_match_bitsandbytes(double_quant):
    bnb = pytest.importorskip("bitsandbytes")

    class Q:
        bits = 4
        type = "nf4"

    Q.double_quant = double_quant
    layer = bnb.nn.Linear4bit(96, 200, bias=False, quant_type="nf4", compress_statistics=double_quant)
    layer.load_state_dict({"weight": torch.randn(200, 96)})
    layer = layer.to("cpu")  # quantizes
    w = layer.weight
    state = w.quant_state
    tensors = [w, state.absmax, state.code]
    if state.nested:
        tensors += [state.state2.absmax, state.state2.code, state.offset]
    allocated = sum(t.untyped_storage().nbytes() for t in tensors)
    assert quantized_weight_bytes(torch.Size([200, 96]), Q) == allocated


def test_8bit_bytes_match_bitsandbytes():
    bnb = pytest.importorskip("bitsandbytes")

    class Q:
        bits = 8

    layer = bnb.nn.Linear8bitLt(96, 200, bias=False, has_fp16_weights=False)
    layer.load_state_dict({"weight": torch.randn(200, 96)})
    layer = layer.to("cpu")  # quantizes: int8 values and one float32 scale per row
    w = layer.weight
    allocated = w.untyped_storage().nbytes() + w.SCB.untyped_storage().nbytes()
    assert w.dtype == torch.int8 and quantized_weight_bytes(torch.Size([200, 96]), Q) == allocated


def test_a_4bit_base_quantizes_the_language_model_only():
    """model.quantization: the language model's linear layers in 4 bits; the vision
    tower, the projector and the output head kept (modeling.quantized_skips)."""
    bnb = pytest.importorskip("bitsandbytes")
    from vlsweep import demo
    from vlsweep.config import ModelConfig
    from vlsweep.trials import load_base

    cfg = ModelConfig(name_or_path="builtin:tiny-qwen2-vl", quantization={"bits": 4})
    base = load_base(demo.resolve_model(cfg))
    four_bit = {n for n, m in base.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    linear = {n for n, m in base.model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert four_bit and all(".language_model." in n for n in four_bit)
    assert {n for n in linear - four_bit} == {
        n for n in linear if n.startswith("model.visual.") or n == "lm_head"
    }


def test_a_grid_towers_activations_at_a_large_image_equal_its_trace():
    """A Qwen-VL tower is traced at three small patch grids and taken to the data's
    image by the polynomial through them (what keeps a 1,296-token page fast to
    estimate); at a grid beyond the three it equals a trace of that image itself."""
    from transformers import AutoConfig

    from vlsweep.params import TrialParams
    from vlsweep.trials import module_groups
    from vlsweep.trials.memory import Shape, vision_activations

    cfg, _ = _bench().train_config({"model": "builtin:tiny-qwen2-vl"})
    hf_config = AutoConfig.from_pretrained(cfg.model.name_or_path)
    groups = module_groups(cfg.model, hf_config.model_type)
    side = 20  # patches per side: beyond the traced 4, 8 and 12
    channels = hf_config.vision_config.in_channels * hf_config.vision_config.temporal_patch_size
    width = channels * hf_config.vision_config.patch_size**2
    image = {
        "pixel_values": torch.rand(side * side, width),
        "image_grid_thw": torch.tensor([[1, side, side]]),
    }
    shape = Shape(batch_size=2, seq_len=0, answer_tokens=0, image=image, image_tokens=side * side // 4)
    for checkpointing in (False, True):
        args = (hf_config, cfg, TrialParams(lora_dropout=0.05), groups, shape, torch.float32)
        extrapolated = vision_activations(*args, checkpointing=checkpointing)
        traced = vision_activations(*args, checkpointing=checkpointing, extrapolate=False)
        assert extrapolated == traced, checkpointing


FIT_EXAMPLES = sorted((BENCH.parents[1] / "examples" / "fit").glob("*.yaml"))


@pytest.mark.parametrize("example", FIT_EXAMPLES, ids=lambda p: p.name)
def test_the_fit_examples_are_sweep_configs(example):
    """docs/cluster.md shows what `vlsweep validate` printed for these (benchmarks/
    fit_examples.py, on stand-ins of the checkpoints); they must stay loadable."""
    from vlsweep.search.config import load_sweep_config

    cfg, _ = load_sweep_config(example)
    assert cfg.resources.gpu_memory_gb is not None


def test_tied_embeddings_count_once_in_the_weights():
    """Qwen2-VL 2B ties its output head to the input embeddings: one tensor, counted once."""
    from transformers import AutoConfig

    from vlsweep.demo import builtin
    from vlsweep.trials.memory import _skeleton, weight_bytes

    hf_config = AutoConfig.from_pretrained(builtin.builtin_path("tiny-qwen2-vl"))
    hf_config.tie_word_embeddings = hf_config.get_text_config().tie_word_embeddings = True
    model = _skeleton(hf_config, None)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    for p in model.parameters():
        p.requires_grad_(False)
    buffers = sum(
        b.numel() * 4
        for m in model.modules()
        for n, b in m.named_buffers(recurse=False)
        if n not in m._non_persistent_buffers_set
    )
    assert (
        weight_bytes(model, torch.float32, set(), None)
        == 4 * sum(p.numel() for p in model.parameters()) + buffers
    )


def test_corners_take_what_a_condition_or_a_tie_may_give():
    """A rank conditional on another searched parameter may be sampled: its range counts
    (with its default, for when it is not); a rank tied to another parameter takes that
    one's range; a layout rank range from 0 steps to its first step, not to 1; the
    smallest configuration takes the cheapest balance the space offers."""
    space, problems = parse_space(
        {
            "lora_targets_llm": {"type": "categorical", "choices": ["attention", "mlp"]},
            "lora_r": {"type": "categorical", "choices": [4, 128], "when": {"lora_targets_llm": "mlp"}},
            "lora_r_vision": {"type": "int", "low": 0, "high": 30, "step": 8},
            "loss_balance": {"type": "categorical", "choices": ["pcgrad", "famo"]},
        }
    )
    assert not problems
    smallest, largest = corners(space, {"lora.vision": True, "lora.projector": "frozen"})
    assert {p.lora_r for p in smallest} == {4} and {p.lora_r for p in largest} == {128}
    assert {p.lora_r_vision for p in largest} == {0}  # as lora_r, 128 > 24
    assert {p.lora_r_vision for p in smallest} == {0}  # as lora_r, 4 < 8
    assert {p.loss_balance for p in smallest} == {"famo"} and {p.loss_balance for p in largest} == {"pcgrad"}

    tied, problems = parse_space(
        {"rotation_period": {"type": "int", "low": 10, "high": 50}, "lora_r": {"same_as": "rotation_period"}}
    )
    assert not problems
    smallest, largest = corners(tied, {"lora.vision": False, "lora.projector": "frozen"})
    assert [p.lora_r for p in smallest] == [10] and [p.lora_r for p in largest] == [50]


def test_an_out_of_memory_error_pickles_with_what_it_advises():
    import pickle

    from vlsweep.errors import TrialOutOfMemory

    err = TrialOutOfMemory(step=3, phase="training", batch=8, detail="CUDA out of memory", quantized=True)
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.quantized
    assert "quantize the base" not in str(back)  # already 4-bit
    assert "quantize the base" in str(TrialOutOfMemory(step=3, phase="setup", batch=8, detail="x"))


def test_a_4bit_base_trains_after_an_evaluation_on_the_cpu(demo_data):
    """A trial evaluates between training steps. On CPUs with AVX512-BF16 bitsandbytes
    would repack its 4-bit weights in place at the first evaluation and the next training
    step would fail (modeling._no_cpu_packing); on other CPUs this holds trivially."""
    pytest.importorskip("bitsandbytes")
    from vlsweep import demo
    from vlsweep.config import TrainConfig
    from vlsweep.params import TrialParams
    from vlsweep.trials import load_data, run_trial

    cfg = TrainConfig.model_validate(
        {
            "model": {"name_or_path": "builtin:tiny-qwen2-vl", "quantization": {"bits": 4}},
            "data": {"train": str(demo_data / "train.jsonl"), "val": str(demo_data / "val.jsonl")},
            "budget": {
                "steps": 4,
                "batch_size": 2,
                "max_new_tokens": 4,
                "eval_every": 2,
                "eval_batch_size": 4,
            },
            "lora": {"vision": True, "projector": "full"},
        }
    )
    cfg = demo.resolve(cfg)
    result = run_trial(TrialParams(), cfg.budget, cfg=cfg, data=load_data(cfg.data, demo_data))
    assert result["steps"] == 4
