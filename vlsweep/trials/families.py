"""What vlsweep knows about each VLM family: where its modules live and how it writes boxes.

A family is keyed by the checkpoint config's ``model_type``. The module map assigns every
parameter name (as the unwrapped transformers model names it) to exactly one of the
three module groups; the regexes of one family are written to be mutually exclusive, so
"matches two groups" can only come from a user override, and is reported as an error.

Sources: the transformers 5.x modeling files of each family, cross-checked against the
public map in ms-swift's ``model_arch.py`` (the most complete one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

GROUPS = ("vision", "projector", "llm")

_LLM_LM = r"model\.language_model\.|lm_head\."
_LLAVA_LIKE = {
    "vision": r"model\.vision_tower\.",
    # image_newline is the learned row separator that anyres models insert between
    # projected image features: it is part of the vision-to-language bridge.
    "projector": r"model\.multi_modal_projector\.|model\.image_newline$",
    "llm": _LLM_LM,
}
_QWEN = {
    "vision": r"model\.visual\.(?!merger\.|deepstack_merger_list\.)",
    "projector": r"model\.visual\.(merger|deepstack_merger_list)\.",
    "llm": _LLM_LM,
}
_IDEFICS = {
    "vision": r"model\.vision_model\.",
    "projector": r"model\.connector\.",
    "llm": r"model\.text_model\.|lm_head\.",
}


@dataclass(frozen=True)
class Family:
    """One model family: module-group regexes (matched at the start of a name) and box codec."""

    name: str
    groups: dict[str, str]
    box_codec: str
    # Value of token_type_ids on answer tokens when the processor emits that key.
    # PaliGemma marks its suffix (answer) with 1 to make the prefix attend bidirectionally;
    # Gemma3 uses the key for image tokens, so answers get 0 there.
    answer_token_type: int = 0
    # Families without a chat template (PaliGemma) get the raw prompt with one image token.
    prompt_image_token: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("qwen2_vl", _QWEN, "qwen2_vl"),
        Family("qwen2_5_vl", _QWEN, "qwen2_5_vl"),
        Family("qwen3_vl", _QWEN, "qwen3_vl", aliases=("qwen3_vl_moe",)),
        Family("llava", _LLAVA_LIKE, "generic"),
        Family("llava_next", _LLAVA_LIKE, "generic"),
        Family("llava_onevision", _LLAVA_LIKE, "generic"),
        Family("internvl", _LLAVA_LIKE, "internvl"),
        Family("idefics3", _IDEFICS, "generic"),
        Family("smolvlm", _IDEFICS, "generic"),
        Family("paligemma", _LLAVA_LIKE, "paligemma", answer_token_type=1, prompt_image_token="<image>"),
        Family("gemma3", _LLAVA_LIKE, "generic"),
    ]
}
_BY_ALIAS = {alias: f for f in FAMILIES.values() for alias in (f.name, *f.aliases)}


def family_for(model_type: str) -> Family | None:
    """The family of a transformers ``model_type``, or None when vlsweep has no map for it."""
    return _BY_ALIAS.get(model_type)


def strip_wrappers(name: str) -> str:
    """A parameter name as the unwrapped transformers model names it.

    Removes peft's ``base_model.model.`` prefix, and the LoRA / modules_to_save infixes,
    so that one regex map serves the base model and its peft-wrapped form.
    """
    name = name.removeprefix("base_model.model.")
    name = re.sub(
        r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
        r"\.[^.]+(?=\.|$)",
        "",
        name,
    )
    name = re.sub(r"\.(modules_to_save|original_module)\.[^.]+(?=\.|$)", "", name)
    return name


class GroupResolutionError(ValueError):
    """Trainable parameters that match no module group or more than one."""

    def __init__(self, unmatched: list[str], ambiguous: dict[str, list[str]]):
        self.unmatched = unmatched
        self.ambiguous = ambiguous
        lines = []
        if unmatched:
            lines.append(
                f"{len(unmatched)} trainable parameter(s) match no module group "
                f"(add a regex under model.module_groups): "
                + ", ".join(unmatched[:20])
                + (" ..." if len(unmatched) > 20 else "")
            )
        for name, groups in list(ambiguous.items())[:20]:
            lines.append(
                f"parameter {name} matches several module groups {groups}: "
                "make the model.module_groups regexes exclusive"
            )
        super().__init__("\n".join(lines))


def compile_groups(patterns: dict[str, str]) -> dict[str, re.Pattern[str]]:
    return {group: re.compile(f"(?:{pattern})") for group, pattern in patterns.items()}


def resolve_groups(
    names: list[str],
    patterns: dict[str, str],
    *,
    trainable: set[str] | None = None,
) -> dict[str, str]:
    """Map each parameter name to its one module group.

    ``patterns`` holds one regex per group, matched with ``re.match`` against the
    unwrapped name. Names in ``trainable`` (all names when None) must match exactly one
    group; other names may match none and are then left out of the result.
    """
    compiled = compile_groups(patterns)
    out: dict[str, str] = {}
    unmatched: list[str] = []
    ambiguous: dict[str, list[str]] = {}
    for name in names:
        bare = strip_wrappers(name)
        hits = [g for g, rx in compiled.items() if rx.match(bare)]
        must = trainable is None or name in trainable
        if len(hits) == 1:
            out[name] = hits[0]
        elif len(hits) > 1:
            ambiguous[name] = hits
        elif must:
            unmatched.append(name)
    if unmatched or ambiguous:
        raise GroupResolutionError(unmatched, ambiguous)
    return out
