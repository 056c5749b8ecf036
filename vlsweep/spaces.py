"""Search spaces: declared in the sweep YAML, suggested define-by-run through Optuna.

A space maps parameter names (DESIGN.md section 2) to one of:

```
lr_llm: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
lora_r: {type: int, low: 4, high: 32, log: true}       # or {type: categorical, choices: [4, 8, 16]}
lora_dropout: 0.05                                      # a fixed value
lr_vision: {type: float, low: 1.0e-6, high: 1.0e-3, log: true, when: {lora.vision: true}}
```

``{same_as: lr_llm}`` ties a parameter to another one of the space: it is not sampled
but takes the other's value (``lr_vision: {same_as: lr_llm}`` searches one shared LR).

``when`` makes a parameter conditional: it is suggested only when every named key (a
config key such as ``lora.vision`` or an earlier parameter) has the given value (or one
of a list of values). An inactive parameter keeps the engine's default, which the trial
does not use (e.g. no vision LR when the vision tower is frozen).

The space is written by hand rather than taken from Ray Tune's ``tune.*`` domains
because Optuna's define-by-run API is what proposes the points here (Ray only runs them)
and conditionals are natural in it; the YAML form is what users and the study record.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vlsweep.trials.params import TrialParams

PARAM_TYPES: dict[str, type] = {"lora_r": int}
PARAM_NAMES = tuple(f.name for f in fields(TrialParams) if f.name not in ("task_weights", "extra"))

Scalar = bool | int | float | str


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    when: dict[str, Scalar | list[Scalar]] | None = None


class FloatSpec(_Spec):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> FloatSpec:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite numbers")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scaled range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("step and log cannot be combined (Optuna samples one or the other)")
        return self


class IntSpec(_Spec):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> IntSpec:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scaled range needs low > 0, got {self.low}")
        if self.log and self.step != 1:
            raise ValueError("step and log cannot be combined (Optuna samples one or the other)")
        return self


class CategoricalSpec(_Spec):
    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)


ParamSpec = FloatSpec | IntSpec | CategoricalSpec
_SPEC_TYPES = {"float": FloatSpec, "int": IntSpec, "categorical": CategoricalSpec}


class Space:
    """A parsed, checked search space: ordered parameter specs, fixed values, and ties
    (a parameter that takes another one's value)."""

    def __init__(
        self, specs: dict[str, ParamSpec], fixed: dict[str, Scalar], tied: dict[str, str] | None = None
    ):
        self.specs = specs
        self.fixed = fixed
        self.tied = tied or {}

    def suggest(self, trial: Any, settings: dict[str, Any]) -> dict[str, Any]:
        """Suggest every active parameter on an Optuna trial; returns name -> value.

        ``settings`` holds the config keys conditions may name (e.g. ``lora.vision``).
        """
        chosen: dict[str, Any] = dict(self.fixed)
        for name, spec in self.specs.items():
            if not _active(spec.when, {**settings, **chosen}):
                continue
            if isinstance(spec, FloatSpec):
                chosen[name] = trial.suggest_float(name, spec.low, spec.high, log=spec.log, step=spec.step)
            elif isinstance(spec, IntSpec):
                chosen[name] = trial.suggest_int(name, spec.low, spec.high, log=spec.log, step=spec.step)
            else:
                chosen[name] = trial.suggest_categorical(name, spec.choices)
        for name, target in self.tied.items():
            if target in chosen:
                chosen[name] = chosen[target]
        return chosen

    def active(self, name: str, settings: dict[str, Any], chosen: dict[str, Any]) -> bool:
        """Whether ``name`` is sampled here (a tied parameter is not: it follows its target)."""
        spec = self.specs.get(name)
        return spec is not None and _active(spec.when, {**settings, **chosen})


def _active(when: dict[str, Any] | None, values: dict[str, Any]) -> bool:
    if not when:
        return True
    for key, want in when.items():
        have = values.get(key)
        if isinstance(want, list):
            if have not in want:
                return False
        elif have != want:
            return False
    return True


def to_trial_params(values: dict[str, Any]) -> TrialParams:
    """Sampled values (plus the engine's defaults for inactive ones) as TrialParams."""
    known = {k: v for k, v in values.items() if k in PARAM_NAMES}
    return TrialParams(**known)


# The default space for a multi-task VLM LoRA fine-tune. Learning rates are searched per
# module group on a log scale (their useful ranges differ by an order of magnitude); the
# vision and projector LRs exist only when those groups train.
DEFAULT_SPACE: dict[str, Any] = {
    "lr_vision": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True, "when": {"lora.vision": True}},
    "lr_projector": {
        "type": "float",
        "low": 1e-5,
        "high": 1e-2,
        "log": True,
        "when": {"lora.projector": ["full", "lora"]},
    },
    "lr_llm": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
    "lora_r": {"type": "categorical", "choices": [4, 8, 16, 32]},
    "lora_alpha_ratio": {"type": "categorical", "choices": [0.5, 1.0, 2.0, 4.0]},
    "lora_dropout": {"type": "float", "low": 0.0, "high": 0.1},
    "weight_ocr": {"type": "float", "low": 0.1, "high": 0.9},
    "mix_temperature": {"type": "float", "low": 1.0, "high": 4.0, "log": True},
    "warmup_ratio": 0.1,
}

# Trial 0 of a sweep: the un-tuned hyperparameters most people start from (one LR for
# everything, LLaMA-Factory's LoRA default 1e-4, rank 8, alpha 16, equal task weights).
BASELINE: dict[str, Any] = {
    "lr_vision": 1e-4,
    "lr_projector": 1e-4,
    "lr_llm": 1e-4,
    "lora_r": 8,
    "lora_alpha_ratio": 2.0,
    "lora_dropout": 0.0,
    "weight_ocr": 0.5,
    "mix_temperature": 1.0,
    "warmup_ratio": 0.1,
}

CONDITION_KEYS = ("lora.vision", "lora.projector", "lora.use_rslora")


def parse_space(raw: dict[str, Any] | None, where: str = "space") -> tuple[Space, list[str]]:
    """Parse a space mapping; returns the space and every problem found (all at once)."""
    raw = DEFAULT_SPACE if raw is None else raw
    problems: list[str] = []
    specs: dict[str, ParamSpec] = {}
    fixed: dict[str, Scalar] = {}
    tied: dict[str, str] = {}
    if not isinstance(raw, dict):
        return Space({}, {}), [f"{where}: must be a mapping of parameter name to range, got {raw!r}"]
    for name, value in raw.items():
        loc = f"{where}.{name}"
        if name not in PARAM_NAMES:
            problems.append(f"{loc}: unknown parameter; known: {', '.join(PARAM_NAMES)}")
            continue
        want_int = PARAM_TYPES.get(name) is int
        if isinstance(value, dict) and "same_as" in value:
            target = value.get("same_as")
            if set(value) != {"same_as"}:
                problems.append(f"{loc}: a tie is {{same_as: PARAMETER}} alone, got {value!r}")
            elif not isinstance(target, str):
                problems.append(f"{loc}.same_as: give one parameter name, got {target!r}")
            elif (
                target not in raw
                or target == name
                or isinstance(raw.get(target), dict)
                and "same_as" in raw[target]
            ):
                problems.append(f"{loc}.same_as: {target!r} must be another, untied parameter of this space")
            elif PARAM_TYPES.get(target) is not PARAM_TYPES.get(name):
                problems.append(f"{loc}.same_as: {name} and {target} take different types")
            else:
                tied[name] = target
            continue
        if isinstance(value, dict):
            kind = value.get("type")
            cls = _SPEC_TYPES.get(kind)  # type: ignore[arg-type]
            if cls is None:
                problems.append(f"{loc}.type: must be one of float, int, categorical (got {kind!r})")
                continue
            try:
                spec = cls.model_validate(value)
            except ValidationError as err:
                for e in err.errors():
                    sub = ".".join(str(p) for p in e["loc"])
                    msg = e["msg"].removeprefix("Value error, ")
                    if e["type"] == "extra_forbidden":
                        msg = "unknown key (a range has type, low, high, log, step, choices, when)"
                    problems.append(f"{loc}{'.' + sub if sub else ''}: {msg}")
                continue
            if want_int and isinstance(spec, FloatSpec):
                problems.append(f"{loc}: {name} is an integer; use type: int or categorical")
                continue
            if (
                want_int
                and isinstance(spec, CategoricalSpec)
                and not all(isinstance(c, int) and not isinstance(c, bool) for c in spec.choices)
            ):
                problems.append(f"{loc}.choices: {name} takes integers, got {spec.choices}")
                continue
            if (
                not want_int
                and isinstance(spec, CategoricalSpec)
                and not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in spec.choices)
            ):
                problems.append(f"{loc}.choices: {name} takes numbers, got {spec.choices}")
                continue
            for key in spec.when or {}:
                if key not in CONDITION_KEYS and key not in raw:
                    problems.append(
                        f"{loc}.when: unknown key {key!r}; use one of {', '.join(CONDITION_KEYS)} "
                        "or a parameter of this space"
                    )
            problems += _check_values(name, loc, spec)
            specs[name] = spec
        elif isinstance(value, (bool, list)) or value is None:
            problems.append(f"{loc}: give a number or a range such as {{type: float, low: ..., high: ...}}")
        else:
            if want_int and not isinstance(value, int):
                problems.append(f"{loc}: {name} is an integer, got {value!r}")
                continue
            if isinstance(value, str):
                problems.append(f"{loc}: {name} takes a number, got {value!r}")
                continue
            problems += _check_values(name, loc, value)
            fixed[name] = value
    for name, target in tied.items():
        loc = f"{where}.{name}.same_as"
        source = specs.get(target, fixed.get(target))
        if isinstance(source, (FloatSpec, IntSpec, CategoricalSpec)) and source.when:
            # A conditional target may be inactive, and the tied parameter would then
            # silently fall back to the engine's default.
            problems.append(f"{loc}: {target} is conditional (when: ...); tie to an unconditional parameter")
        elif source is not None:
            problems += _check_values(name, loc, source)
    return Space(specs, fixed, tied), problems


def _check_values(name: str, loc: str, spec: ParamSpec | Scalar) -> list[str]:
    """The ends of a range (or the fixed value) must be valid for the engine."""
    if isinstance(spec, (FloatSpec, IntSpec)):
        candidates = [spec.low, spec.high]
    elif isinstance(spec, CategoricalSpec):
        candidates = list(spec.choices)
    else:
        candidates = [spec]
    for value in candidates:
        try:
            TrialParams(**{name: value})
        except (TypeError, ValueError) as exc:
            return [f"{loc}: {exc}"]
    return []
