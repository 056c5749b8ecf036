"""The searchable hyperparameters of one short fine-tune: the one definition of their
names, types, valid ranges, engine defaults, baseline values and default search ranges.

Everything else reads this: the train config's ``params`` section is ``TrialParams``, the
sweep's default space and baseline trial are built from the ``Searched`` marks below,
the engine takes a ``TrialParams``, and every export format writes ``TrialParams``
fields, so a value the trial ran with is the value each format writes. A parameter is
added here once (a field with its range and its ``Searched`` mark) and the space, the
config, the engine and the exporters see it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

TASKS = ("ocr", "grounding")
# The module groups that get a learning rate of their own, and the parameter that holds it.
GROUP_LR = {"vision": "lr_vision", "projector": "lr_projector", "llm": "lr_llm"}
# How the tasks' losses become one update (vlsweep.trials.losses.BALANCES implements each;
# docs/strategies.md says what each does and costs).
LOSS_BALANCES = ("static", "uncertainty", "famo", "pcgrad", "upgrad")
LossBalance = Literal["static", "uncertainty", "famo", "pcgrad", "upgrad"]
# Which linear layers of a module group carry LoRA (vlsweep.trials.lora.layer_kind).
LoraTargets = Literal["all", "attention", "mlp"]
# The sweep config's `strategies` keys: each turns on the search of the parameters it names
# below (their Searched.strategy entry); off, they keep their off value.
STRATEGIES = ("loss_balance", "oversample", "curriculum", "rotation", "vision_first", "lora_layout")


@dataclass(frozen=True)
class Searched:
    """How a sweep treats the parameter by default: the value the un-tuned baseline trial
    runs with, and its entry in the default space (a range in the space's YAML form, or a
    fixed value)."""

    baseline: float | int | str
    space: dict[str, Any] | float | int | str
    # (the `strategies` key that turns its search on, its space entry then); None: the
    # parameter is in the default space as ``space`` says.
    strategy: tuple[str, dict[str, Any]] | None = None


def _log_range(low: float, high: float, **when: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "float", "low": low, "high": high, "log": True}
    if when:
        out["when"] = {k.replace("__", "."): v for k, v in when.items()}
    return out


def _layout_rank(when: dict[str, Any]) -> Searched:
    """A module group's own LoRA rank: off (0, follow lora_r) unless lora_layout searches it."""
    choices = {"type": "categorical", "choices": [0, 4, 8, 16, 32], "when": when}
    return Searched(0, 0, strategy=("lora_layout", choices))


class TrialParams(BaseModel):
    """One point of the search space, already valid (names as the study's parameters).

    The defaults are what ``vlsweep train`` runs when its config leaves a parameter out;
    the baseline (``BASELINE``) is what most people start from. Learning rates are per
    module group (``lr_for``); the vision and projector ones apply only when those groups
    train (``lora.vision``, ``lora.projector``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, validate_default=True)

    # Learning rates are searched per group on a log scale: their useful ranges differ by
    # an order of magnitude. The baseline is LLaMA-Factory's LoRA default, one LR for all.
    lr_vision: Annotated[float, Field(ge=0), Searched(1e-4, _log_range(1e-5, 1e-3, lora__vision=True))] = 2e-4
    lr_projector: Annotated[
        float, Field(ge=0), Searched(1e-4, _log_range(1e-5, 1e-2, lora__projector=["full", "lora"]))
    ] = 1e-3
    lr_llm: Annotated[float, Field(ge=0), Searched(1e-4, _log_range(1e-5, 1e-2))] = 1e-3
    lora_r: Annotated[int, Field(ge=1), Searched(8, {"type": "categorical", "choices": [4, 8, 16, 32]})] = 8
    # lora_alpha = ratio x rank, so the ratio (the scale of the update) is searched apart
    # from the rank.
    lora_alpha_ratio: Annotated[
        float, Field(gt=0), Searched(2.0, {"type": "categorical", "choices": [0.5, 1.0, 2.0, 4.0]})
    ] = 2.0
    lora_dropout: Annotated[
        float, Field(ge=0, lt=1), Searched(0.0, {"type": "float", "low": 0.0, "high": 0.1})
    ] = 0.0
    # How the task losses make one update: "static" is the weighted sum by weight_ocr; the
    # others adapt the balance as training goes (vlsweep.trials.losses).
    loss_balance: Annotated[
        LossBalance,
        Searched(
            "static",
            "static",
            strategy=("loss_balance", {"type": "categorical", "choices": list(LOSS_BALANCES)}),
        ),
    ] = "static"
    # Loss weight of the OCR task; grounding gets 1 - weight_ocr. Used by the static balance.
    weight_ocr: Annotated[
        float,
        Field(ge=0, le=1),
        Searched(0.5, {"type": "float", "low": 0.1, "high": 0.9, "when": {"loss_balance": "static"}}),
    ] = 0.5
    # Task sampling: probability of a task proportional to its record count ** (1 / T).
    mix_temperature: Annotated[
        float, Field(gt=0), Searched(1.0, {"type": "float", "low": 1.0, "high": 4.0, "log": True})
    ] = 1.0
    warmup_ratio: Annotated[float, Field(ge=0, lt=1), Searched(0.1, 0.1)] = 0.1
    # Data strategies (vlsweep.trials.data.Schedule); each is off at its default.
    # Hard grounding samples (the smaller half of the boxes, trials/data.difficulty) are
    # drawn this many times as often as the easy half. 1 = off.
    hard_oversample: Annotated[
        float,
        Field(ge=1),
        Searched(1.0, 1.0, strategy=("oversample", {"type": "float", "low": 1.0, "high": 4.0, "log": True})),
    ] = 1.0
    # Curriculum: over this fraction of the steps the pool grows from the easiest samples of
    # each task to all of them (competence sqrt schedule). 0 = off.
    curriculum_ratio: Annotated[
        float,
        Field(ge=0, lt=1),
        Searched(0.0, 0.0, strategy=("curriculum", {"type": "float", "low": 0.0, "high": 0.8})),
    ] = 0.0
    # Task rotation: phases of this many steps, each task dominant in turn. 0 = off.
    rotation_period: Annotated[
        int,
        Field(ge=0),
        Searched(0, 0, strategy=("rotation", {"type": "categorical", "choices": [0, 10, 25, 50]})),
    ] = 0
    # The dominant task's share of each batch during its phase.
    rotation_share: Annotated[
        float,
        Field(ge=0.5, lt=1),
        Searched(
            0.8,
            0.8,
            strategy=(
                "rotation",
                {"type": "float", "low": 0.6, "high": 0.95, "when": {"rotation_period": {"not": 0}}},
            ),
        ),
    ] = 0.8
    # Progressive training: the first fraction of the steps trains the vision tower and the
    # projector alone; the LLM joins after. 0 = off.
    vision_first_ratio: Annotated[
        float,
        Field(ge=0, lt=1),
        Searched(0.0, 0.0, strategy=("vision_first", {"type": "float", "low": 0.0, "high": 0.5})),
    ] = 0.0
    # LoRA layout: the rank of the vision tower's and the projector's LoRA (0 = lora_r, the
    # LLM's), and which layers of each group carry LoRA.
    lora_r_vision: Annotated[int, Field(ge=0), _layout_rank({"lora.vision": True})] = 0
    lora_r_projector: Annotated[int, Field(ge=0), _layout_rank({"lora.projector": "lora"})] = 0
    lora_targets_llm: Annotated[
        LoraTargets,
        Searched(
            "all",
            "all",
            strategy=("lora_layout", {"type": "categorical", "choices": ["all", "attention", "mlp"]}),
        ),
    ] = "all"
    lora_targets_vision: Annotated[
        LoraTargets,
        Searched(
            "all",
            "all",
            strategy=(
                "lora_layout",
                {
                    "type": "categorical",
                    "choices": ["all", "attention", "mlp"],
                    "when": {"lora.vision": True},
                },
            ),
        ),
    ] = "all"

    @property
    def lora_alpha(self) -> float:
        return self.lora_alpha_ratio * self.lora_r

    def lr_for(self, group: str) -> float:
        """The learning rate of a module group (vision, projector, llm)."""
        return float(getattr(self, GROUP_LR[group]))

    def weights_for(self, tasks: list[str]) -> dict[str, float]:
        """Loss weight per task present in the data."""
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"no loss weight for task(s) {unknown}; weight_ocr covers {TASKS}")
        weights = {"ocr": self.weight_ocr, "grounding": 1 - self.weight_ocr}
        return {t: weights[t] for t in tasks}

    def targets_for(self, group: str) -> str:
        """Which linear layers of a group carry LoRA: all, attention or mlp."""
        return {"llm": self.lora_targets_llm, "vision": self.lora_targets_vision}.get(group, "all")

    def warmup_steps(self, steps: int) -> int:
        """The warmup in whole steps, as the engine's schedule and every export count it."""
        return round(self.warmup_ratio * steps)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def of(cls, values: dict[str, Any]) -> TrialParams:
        """The parameters a trial runs with: ``values`` (a space's fixed values and samples;
        other keys are ignored) over the engine defaults."""
        return cls(**{k: v for k, v in values.items() if k in PARAM_NAMES})


PARAM_NAMES: tuple[str, ...] = tuple(TrialParams.model_fields)
PARAM_TYPES: dict[str, type] = {n: f.annotation for n, f in TrialParams.model_fields.items()}  # type: ignore[misc]


def _searched(name: str) -> Searched:
    return next(m for m in TrialParams.model_fields[name].metadata if isinstance(m, Searched))


# Trial 0 of a sweep: the un-tuned hyperparameters most people start from (one LR for
# everything, LLaMA-Factory's LoRA default 1e-4, rank 8, alpha 16, equal task weights).
BASELINE: dict[str, Any] = {n: _searched(n).baseline for n in PARAM_NAMES}
# The space a sweep searches when its config gives none.
DEFAULT_SPACE: dict[str, Any] = {n: _searched(n).space for n in PARAM_NAMES}


def strategy_space(key: str) -> dict[str, Any]:
    """The space entries the sweep config's ``strategies.<key>: true`` adds."""
    if key not in STRATEGIES:
        raise KeyError(key)
    return {n: m.strategy[1] for n in PARAM_NAMES if (m := _searched(n)).strategy and m.strategy[0] == key}


def choices(name: str) -> tuple[str, ...] | None:
    """The values of a parameter that takes one of a few names (None for numbers)."""
    kind = PARAM_TYPES[name]
    return tuple(get_args(kind)) if get_origin(kind) is Literal else None


def rule(name: str) -> str:
    """The valid range of a parameter in words ("in [0, 1)", ">= 0"), from its field."""
    bounds: dict[str, Any] = {}
    for m in TrialParams.model_fields[name].metadata:  # pydantic's Ge, Gt, Le, Lt marks
        for kind in ("ge", "gt", "le", "lt"):
            if getattr(m, kind, None) is not None:
                bounds[kind] = getattr(m, kind)
    lo = ("[", bounds["ge"]) if "ge" in bounds else ("(", bounds["gt"]) if "gt" in bounds else None
    hi = ("]", bounds["le"]) if "le" in bounds else (")", bounds["lt"]) if "lt" in bounds else None
    kind = "an integer" if PARAM_TYPES[name] is int else "a finite number"
    if lo and hi:
        return f"in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
    if lo:
        return f"{kind} {'>=' if lo[0] == '[' else '>'} {lo[1]:g}"
    return kind


def check_value(name: str, value: Any) -> str | None:
    """Why ``value`` is not valid for parameter ``name`` (None when it is)."""
    names = choices(name)
    if names is not None:
        return None if value in names else f"{name} must be one of {', '.join(names)}, got {value!r}"
    if PARAM_TYPES[name] is int and (isinstance(value, bool) or not isinstance(value, int)):
        return f"{name} must be an integer, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} must be a number, got {value!r}"
    try:  # the model refuses inf and nan too (allow_inf_nan=False)
        TrialParams.model_validate({name: value})
    except ValidationError:
        return f"{name} must be {rule(name)}, got {value!r}"
    return None
