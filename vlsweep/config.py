"""Config files: schema (pydantic v2), YAML loading, and error lines that name the field.

A config is validated as a whole and every problem is reported at once, each as
``<file>: <dotted.field>: <what is wrong> (got <value>)``. Unknown keys are rejected, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vlsweep.errors import UserInputError
from vlsweep.params import TrialParams

# Names in config files that stand for something vlsweep makes (vlsweep.demo): a builtin
# base model ("builtin:tiny-qwen2-vl") and the demo dataset ("builtin:demo/train").
BUILTIN = "builtin:"
DEMO_DATA = BUILTIN + "demo"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class QuantizationConfig(_Strict):
    """``model.quantization``: the frozen language model in 4 or 8 bits (QLoRA), loaded through
    transformers' ``BitsAndBytesConfig``. The vision tower, the projector and the output head
    stay in the model's dtype (``trials/modeling.py: quantized_skips`` says why)."""

    bits: Literal[4, 8]
    # 4-bit only: the data type of the 4-bit values and whether their block scales are
    # quantized again (QLoRA's "double quantization").
    type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True

    @model_validator(mode="after")
    def _four_bit_keys(self) -> QuantizationConfig:
        if self.bits == 8 and ("type" in self.model_fields_set or "double_quant" in self.model_fields_set):
            raise ValueError("type and double_quant apply to bits: 4 only; remove them for 8-bit")
        return self


class ModelConfig(_Strict):
    name_or_path: str = "builtin:tiny-qwen2-vl"
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = None
    gradient_checkpointing: bool = False
    # Pickle-based weight files (.bin) can run code on load: refused unless allowed here.
    allow_pickle: bool = False
    # Override the family's module map: one regex per group, matched at the start of
    # the parameter name (e.g. "model\\.visual\\.merger\\.").
    module_groups: dict[Literal["vision", "projector", "llm"], str] | None = None
    box_codec: (
        Literal["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "paligemma", "florence2", "internvl", "generic"] | None
    ) = None
    device: str = "auto"
    # QLoRA: the base's language model quantized with bitsandbytes (none = not quantized).
    quantization: QuantizationConfig | None = None


class DataSource(_Strict):
    path: str
    format: Literal["vlsweep", "sharegpt"] = "vlsweep"
    # sharegpt files hold one task each; vlsweep records name theirs.
    task: Literal["ocr", "grounding"] | None = None
    # How the assistant answers of a sharegpt grounding file write their box.
    box_format: Literal[
        "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "paligemma", "florence2", "internvl", "generic", "pixels"
    ] = "pixels"

    @model_validator(mode="after")
    def _sharegpt_needs_task(self) -> DataSource:
        if self.format == "sharegpt" and self.task is None:
            raise ValueError("a sharegpt file needs `task: ocr` or `task: grounding`")
        return self


def _sources(value: Any) -> Any:
    if isinstance(value, (str, Path)):
        return [{"path": str(value)}]
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [{"path": v} if isinstance(v, str) else v for v in value]
    return value


DEFAULT_PROMPTS = {
    "ocr": "What is the text in the image?",
    "grounding": "Where is {query}? Answer with a bounding box.",
}


# The data splits a config names: training, validation, and the retention set forgetting
# is measured on (prompts the base model already answers; optional).
SPLITS = ("train", "val", "retain")


class DataConfig(_Strict):
    train: list[DataSource]
    val: list[DataSource]
    retain: list[DataSource] = Field(default_factory=list)
    prompts: dict[Literal["ocr", "grounding"], str] = Field(default_factory=dict)
    max_val_samples: int | None = Field(default=None, ge=1)

    _coerce_train = field_validator("train", "val", "retain", mode="before")(_sources)

    @field_validator("prompts")
    @classmethod
    def _grounding_prompt_has_query(cls, value: dict[str, str]) -> dict[str, str]:
        if "grounding" in value and "{query}" not in value["grounding"]:
            raise ValueError("the grounding prompt must contain {query}")
        return value

    def prompt(self, task: str) -> str:
        return self.prompts.get(task, DEFAULT_PROMPTS[task])  # type: ignore[call-overload]


class BudgetConfig(_Strict):
    steps: int = Field(default=200, ge=1)
    batch_size: int = Field(default=8, ge=1)
    # Evaluate (and report) every N steps; the last step is always evaluated.
    eval_every: int | None = Field(default=None, ge=1)
    # Further steps to evaluate at (a sweep with early stopping adds its rungs here).
    eval_at: list[int] = Field(default_factory=list)
    max_new_tokens: int = Field(default=32, ge=1)
    eval_batch_size: int = Field(default=32, ge=1)
    # Keep the trial's trainable state every N steps (none: never). In a sweep it is a Ray
    # Tune checkpoint in ray.storage_path, and a trial re-run after its worker or node was
    # lost continues from the last one instead of from step 0.
    checkpoint_steps: int | None = Field(default=None, ge=1)


class AdapterConfig(_Strict):
    """The ``lora:`` section: which module groups get an adapter and how. (Named apart from
    peft's ``LoraConfig``, which ``trials/lora.py`` builds from it and a trial's parameters.)"""

    vision: bool = False
    projector: Literal["full", "lora", "frozen"] = "full"
    use_rslora: bool = False
    # Rank per group; a group left out uses the searched lora_r. Alpha keeps the ratio.
    rank: dict[Literal["vision", "projector", "llm"], int] = Field(default_factory=dict)
    # LoRA+ (Hayou et al. 2024): lora_B learns this many times faster than lora_A.
    loraplus_lr_ratio: float | None = Field(default=None, gt=0)
    # Regex (re.fullmatch on module names) per group; default: every nn.Linear in the group.
    targets: dict[Literal["vision", "projector", "llm"], str] = Field(default_factory=dict)

    @field_validator("rank")
    @classmethod
    def _positive(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {k: v for k, v in value.items() if v < 1}
        if bad:
            raise ValueError(f"ranks must be >= 1, got {bad}")
        return value


class OptimConfig(_Strict):
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)


class LossConfig(_Strict):
    """Settings of the loss-balancing strategies; which one a trial runs is its
    ``loss_balance`` parameter (``params.loss_balance`` or the space)."""

    # Learning rate of the uncertainty strategy's log-variances (their own optimizer group,
    # on the trial's warmup + cosine schedule).
    balance_lr: float = Field(default=0.025, gt=0)
    # Learning rate of FAMO's own Adam on its task logits (the paper's 0.025).
    famo_lr: float = Field(default=0.025, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _strategy_moved(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("strategy") == "weighted_sum":
            # What every study and export before loss_balance recorded: the static balance.
            return {k: v for k, v in value.items() if k != "strategy"}
        if isinstance(value, dict) and "strategy" in value:
            raise ValueError(
                "loss.strategy is now the parameter loss_balance (weighted_sum is `static`): "
                "set params.loss_balance in a train config, or space.loss_balance / "
                "strategies.loss_balance in a sweep"
            )
        return value


class RunConfig(_Strict):
    """What one fine-tune runs on: shared by train and sweep configs."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    lora: AdapterConfig = Field(default_factory=AdapterConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    seed: int = 0
    output_dir: str | None = None


class TrainConfig(RunConfig):
    """A ``vlsweep train`` config: one fine-tune with fixed hyperparameters."""

    name: str = "train"
    # Fixed hyperparameters, named as the study's parameters (vlsweep.params).
    params: TrialParams = Field(default_factory=TrialParams)

    @model_validator(mode="after")
    def _vision_side_trains(self) -> TrainConfig:
        if self.params.vision_first_ratio > 0 and not self.lora.vision and self.lora.projector == "frozen":
            raise ValueError(
                "params.vision_first_ratio trains the vision side first, but lora.vision is false "
                "and lora.projector is frozen: turn one on, or set vision_first_ratio to 0"
            )
        return self


def format_validation_error(err: ValidationError, source: str) -> list[str]:
    """One line per problem: ``source: field.path: message (got value)``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see docs/config.md for the keys)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif e["type"] == "model_type":  # pydantic's text names our class, not the section
            msg = "must be a mapping of keys (see docs/config.md for the keys)"
        got = e.get("input")
        # A storage URL may hold a password: never echo it.
        secret = loc.split(".")[-1] == "storage"
        shown = "" if e["type"] in ("missing",) or isinstance(got, dict) or secret else f" (got {got!r})"
        lines.append(f"{source}: {loc}: {msg}{shown}")
    return lines


class _DuplicateKey(yaml.MarkedYAMLError):
    pass


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (the
    plain loader keeps the last one silently: a typo'd copy of a block would win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class says so
                break
            if first is not None:
                raise _DuplicateKey(
                    problem=f"key {key!r} is given twice in one mapping (first on line "
                    f"{first.start_mark.line + 1}); keep one",
                    problem_mark=key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse YAML strictly (safe types only, no duplicate keys)."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserInputError(f"{path}: no such config file (give the path of a YAML file)")
    try:
        data = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserInputError(f"{loc}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def load_train_config(path: str | Path) -> tuple[TrainConfig, Path]:
    """Load and validate a train config; returns it with the directory paths are relative to."""
    path = Path(path)
    data = read_yaml(path)
    try:
        cfg = TrainConfig.model_validate(data)
    except ValidationError as err:
        raise UserInputError(format_validation_error(err, str(path))) from None
    return cfg, path.resolve().parent
