from __future__ import annotations

import pytest
import torch

from tests.support.tiny_models import BUILDERS
from vlsweep.config import AdapterConfig
from vlsweep.params import TrialParams
from vlsweep.trials.families import FAMILIES, GroupResolutionError, resolve_groups, strip_wrappers
from vlsweep.trials.lora import attach_lora, plan_lora


@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(0)
    return {name: build()[0] for name, build in BUILDERS.items()}


def test_every_family_in_the_map_has_a_tiny_builder():
    assert set(FAMILIES) == set(BUILDERS)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_parameter_resolves_to_exactly_one_group(tiny_models, family):
    model = tiny_models[family]
    names = [n for n, _ in model.named_parameters()]
    groups = resolve_groups(names, FAMILIES[family].groups)  # raises on none or several
    assert set(groups) == set(names)
    assert set(groups.values()) == {"vision", "projector", "llm"}
    # The output head and the embeddings belong to the LLM.
    for name in names:
        if "embed_tokens" in name or name.startswith("lm_head"):
            assert groups[name] == "llm", name


def test_qwen_merger_is_projector_not_vision(tiny_models):
    names = [n for n, _ in tiny_models["qwen3_vl"].named_parameters()]
    groups = resolve_groups(names, FAMILIES["qwen3_vl"].groups)
    assert all(groups[n] == "projector" for n in names if ".merger." in n)
    assert all(groups[n] == "projector" for n in names if "deepstack_merger_list" in n)
    assert groups["model.visual.blocks.0.attn.qkv.weight"] == "vision"


def test_unmatched_trainable_parameters_are_listed():
    names = ["model.vision.x.weight", "model.language_model.a.weight", "extra.head.weight"]
    patterns = {
        "vision": r"model\.vision\.",
        "projector": r"model\.proj\.",
        "llm": r"model\.language_model\.",
    }
    with pytest.raises(GroupResolutionError) as err:
        resolve_groups(names, patterns)
    assert err.value.unmatched == ["extra.head.weight"]
    assert "extra.head.weight" in str(err.value)
    # A frozen parameter outside every group is fine.
    assert resolve_groups(names, patterns, trainable=set(names[:2])) == {names[0]: "vision", names[1]: "llm"}


def test_a_parameter_in_two_groups_is_an_error():
    patterns = {"vision": r"model\.visual\.", "projector": r"model\.visual\.merger\.", "llm": r"lm_head"}
    with pytest.raises(GroupResolutionError) as err:
        resolve_groups(["model.visual.merger.mlp.0.weight"], patterns)
    assert err.value.ambiguous == {"model.visual.merger.mlp.0.weight": ["vision", "projector"]}


def test_peft_names_are_unwrapped():
    assert (
        strip_wrappers(
            "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight"
        )
        == "model.language_model.layers.0.self_attn.q_proj.weight"
    )
    assert (
        strip_wrappers("base_model.model.model.visual.merger.modules_to_save.default.mlp.0.weight")
        == "model.visual.merger.mlp.0.weight"
    )


def _lora_modules(model) -> list[str]:
    return sorted({n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A." in n})


def test_bare_mlp_names_do_not_leak_lora_into_the_qwen2_5_vision_tower():
    # Qwen2.5-VL's vision MLP reuses gate_proj/up_proj/down_proj, the LLM's projection names.
    torch.manual_seed(0)
    model, _ = BUILDERS["qwen2_5_vl"]()
    assert any("visual.blocks.0.mlp.gate_proj" in n for n, _ in model.named_modules())
    groups = FAMILIES["qwen2_5_vl"].groups
    params = TrialParams(lora_r=4)
    peft_model = attach_lora(
        model, plan_lora(model, groups, params, AdapterConfig()), params, AdapterConfig()
    )
    targets = _lora_modules(peft_model)
    assert targets and all(".language_model." in t for t in targets), targets
    assert any(t.endswith("mlp.gate_proj") for t in targets)


def test_vision_lora_and_per_group_rank():
    torch.manual_seed(0)
    model, _ = BUILDERS["qwen2_5_vl"]()
    cfg = AdapterConfig(vision=True, projector="lora", rank={"vision": 2, "projector": 3})
    params = TrialParams(lora_r=8, lora_alpha_ratio=2.0)
    plan = plan_lora(model, FAMILIES["qwen2_5_vl"].groups, params, cfg)
    assert plan.rank == {"llm": 8, "vision": 2, "projector": 3}
    assert plan.alpha == {"llm": 16.0, "vision": 4.0, "projector": 6.0}
    peft_model = attach_lora(model, plan, params, cfg)
    shapes = {
        n.rsplit(".lora_A", 1)[0]: p.shape[0] for n, p in peft_model.named_parameters() if ".lora_A." in n
    }
    assert shapes["base_model.model.model.visual.blocks.0.mlp.gate_proj"] == 2
    assert shapes["base_model.model.model.visual.blocks.0.attn.qkv"] == 2
    assert shapes["base_model.model.model.visual.merger.mlp.0"] == 3
    assert shapes["base_model.model.model.language_model.layers.0.self_attn.q_proj"] == 8
    scaling = peft_model.base_model.model.model.visual.blocks[0].attn.qkv.scaling["default"]
    assert scaling == pytest.approx(4.0 / 2)


def test_projector_modes(tiny_models):
    model = BUILDERS["qwen2_vl"]()[0]
    groups = FAMILIES["qwen2_vl"].groups
    full = plan_lora(model, groups, TrialParams(), AdapterConfig(projector="full"))
    assert full.modules_to_save == ["model.visual.merger"] and "projector" not in full.targets
    frozen = plan_lora(model, groups, TrialParams(), AdapterConfig(projector="frozen"))
    assert frozen.modules_to_save == [] and set(frozen.targets) == {"llm"}
    gemma = plan_lora(tiny_models["gemma3"], FAMILIES["gemma3"].groups, TrialParams(), AdapterConfig())
    # Gemma3's projector holds a bare weight matrix; the whole module is trained.
    assert gemma.modules_to_save == ["model.multi_modal_projector"]
