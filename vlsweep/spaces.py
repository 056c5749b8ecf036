"""Search spaces: declared in the sweep YAML, suggested define-by-run through Optuna.

A space maps parameter names (the fields of ``vlsweep.params.TrialParams``) to one of:

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
of a list of values, or any value but ``V`` for ``{not: V}``). An inactive parameter
keeps the engine's default, which the trial does not use (e.g. no vision LR when the
vision tower is frozen).

The space is written by hand rather than taken from Ray Tune's ``tune.*`` domains
because Optuna's define-by-run API is what proposes the points here (Ray only runs them)
and conditionals are natural in it; the YAML form is what users and the study record.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vlsweep.params import (
    DEFAULT_SPACE,
    PARAM_NAMES,
    PARAM_TYPES,
    STRATEGIES,
    check_value,
    choices,
    strategy_space,
)

Scalar = bool | int | float | str


class Not(BaseModel):
    """``{not: VALUE}`` in a condition: holds when the key has any other value."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    not_: Scalar = Field(alias="not")


class _Searched(BaseModel):
    model_config = ConfigDict(extra="forbid")
    when: dict[str, Scalar | list[Scalar] | Not] | None = None


class FloatRange(_Searched):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> FloatRange:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite numbers")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scaled range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("step and log cannot be combined (Optuna samples one or the other)")
        return self


class IntRange(_Searched):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scaled range needs low > 0, got {self.low}")
        if self.log and self.step != 1:
            raise ValueError("step and log cannot be combined (Optuna samples one or the other)")
        return self


class CategoricalChoice(_Searched):
    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)


Searched = FloatRange | IntRange | CategoricalChoice
_SEARCHED_TYPES: dict[str, type[FloatRange] | type[IntRange] | type[CategoricalChoice]] = {
    "float": FloatRange,
    "int": IntRange,
    "categorical": CategoricalChoice,
}


class Space:
    """A parsed, checked search space: the searched parameters' ranges in order, fixed values, and ties
    (a parameter that takes another one's value)."""

    def __init__(
        self, searched: dict[str, Searched], fixed: dict[str, Scalar], tied: dict[str, str] | None = None
    ):
        self.searched = searched
        self.fixed = fixed
        self.tied = tied or {}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Space):
            return NotImplemented
        return (list(self.searched.items()), self.fixed, self.tied) == (
            list(other.searched.items()),
            other.fixed,
            other.tied,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable: compared by value, not hashed

    def suggest(self, trial: Any, settings: dict[str, Any]) -> dict[str, Any]:
        """Suggest every active parameter on an Optuna trial; returns name -> value.

        ``settings`` holds the config keys conditions may name (e.g. ``lora.vision``).
        """
        chosen: dict[str, Any] = dict(self.fixed)
        for name, entry in self.searched.items():
            if not _active(entry.when, {**settings, **chosen}):
                continue
            if isinstance(entry, FloatRange):
                chosen[name] = trial.suggest_float(
                    name, entry.low, entry.high, log=entry.log, step=entry.step
                )
            elif isinstance(entry, IntRange):
                chosen[name] = trial.suggest_int(name, entry.low, entry.high, log=entry.log, step=entry.step)
            else:
                chosen[name] = trial.suggest_categorical(name, entry.choices)
        for name, target in self.tied.items():
            if target in chosen:
                chosen[name] = chosen[target]
        return chosen

    def outside(self, point: dict[str, Any], *, fixed: bool = True) -> list[str]:
        """The parameters of ``point`` (as ``name=value``) that the space cannot produce: off
        a range or its step, not among the choices, or (with ``fixed``) not the fixed value.
        Names the space does not search are not judged."""
        out = []
        for name, value in point.items():
            entry = self.searched.get(name)
            if entry is None:
                bad = fixed and name in self.fixed and value != self.fixed[name]
            else:
                bad = not _inside(entry, value)
            if bad:
                out.append(f"{name}={value!r}")
        return out

    def active(self, name: str, settings: dict[str, Any], chosen: dict[str, Any]) -> bool:
        """Whether ``name`` is sampled here (a tied parameter is not: it follows its target)."""
        entry = self.searched.get(name)
        return entry is not None and _active(entry.when, {**settings, **chosen})


def _inside(entry: Searched, value: Any) -> bool:
    if isinstance(entry, CategoricalChoice):
        return value in entry.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if not entry.low <= value <= entry.high:
        return False
    if isinstance(entry, IntRange):
        return value == int(value) and (int(value) - entry.low) % entry.step == 0
    if entry.step is not None:
        k = (value - entry.low) / entry.step
        return abs(k - round(k)) < 1e-8
    return True


def _active(when: dict[str, Any] | None, values: dict[str, Any]) -> bool:
    if not when:
        return True
    for key, want in when.items():
        have = values.get(key)
        if isinstance(want, Not):
            if have is None or have == want.not_:
                return False
        elif isinstance(want, list):
            if have not in want:
                return False
        elif have != want:
            return False
    return True


CONDITION_KEYS = ("lora.vision", "lora.projector", "lora.use_rslora")


def with_strategies(raw: dict[str, Any] | None, strategies: list[str]) -> dict[str, Any] | None:
    """The space a sweep searches: ``raw`` (or the default space) with the entries of each
    strategy turned on added, except where ``raw`` already names the parameter (the user's
    own range wins). Unchanged when no strategy is on."""
    if not strategies or not isinstance(raw, (dict, type(None))):
        return raw
    added = {
        name: entry
        for key in STRATEGIES
        if key in strategies
        for name, entry in strategy_space(key).items()
        if raw is None or name not in raw
    }
    merged = {**DEFAULT_SPACE, **added} if raw is None else {**added, **raw}
    return _conditions_first(merged)


def _conditions_first(raw: dict[str, Any]) -> dict[str, Any]:
    """The entries reordered (stably) so that a parameter comes after every parameter its
    ``when`` names: they are suggested in order (weight_ocr after loss_balance)."""
    out: dict[str, Any] = {}

    def place(name: str, seen: tuple[str, ...]) -> None:
        if name in out or name in seen:  # placed, or a cycle (parse_space reports it)
            return
        entry = raw[name]
        when = entry.get("when") if isinstance(entry, dict) else None
        for key in when or {}:
            if key in raw:
                place(key, (*seen, name))
        out[name] = entry

    for name in raw:
        place(name, ())
    return out


def parse_space(raw: dict[str, Any] | None, field: str = "space") -> tuple[Space, list[str]]:
    """Parse a space mapping; returns the space and every problem found (all at once).

    Each entry is one of three syntaxes, each parsed and checked by its own function: a
    tie (``{same_as: NAME}``, ``_parse_tie``), a range (``{type: ...}``, ``_parse_range``)
    or a fixed value (``_parse_fixed``). Ties are checked against their targets last."""
    raw = DEFAULT_SPACE if raw is None else raw
    if not isinstance(raw, dict):
        return Space({}, {}), [f"{field}: must be a mapping of parameter name to range, got {raw!r}"]
    problems: list[str] = []
    searched: dict[str, Searched] = {}
    fixed: dict[str, Scalar] = {}
    tied: dict[str, str] = {}
    for name, value in raw.items():
        loc = f"{field}.{name}"
        if name not in PARAM_NAMES:
            problems.append(f"{loc}: unknown parameter; known: {', '.join(PARAM_NAMES)}")
        elif isinstance(value, dict) and "same_as" in value:
            target, found = _parse_tie(name, value, loc, raw)
            problems += found
            if target is not None:
                tied[name] = target
        elif isinstance(value, dict):
            entry, found = _parse_range(name, value, loc, raw)
            problems += found
            if entry is not None:
                searched[name] = entry
        else:
            scalar, found = _parse_fixed(name, value, loc)
            problems += found
            if scalar is not None:
                fixed[name] = scalar
    for name, target in tied.items():
        problems += _check_tie(
            name, searched.get(target, fixed.get(target)), target, f"{field}.{name}.same_as"
        )
    return Space(searched, fixed, tied), problems


def _parse_tie(
    name: str, value: dict[str, Any], loc: str, raw: dict[str, Any]
) -> tuple[str | None, list[str]]:
    """``{same_as: TARGET}``: another, untied parameter of the space, of the same type."""
    target = value.get("same_as")
    if set(value) != {"same_as"}:
        return None, [f"{loc}: a tie is {{same_as: PARAMETER}} alone, got {value!r}"]
    if not isinstance(target, str):
        return None, [f"{loc}.same_as: give one parameter name, got {target!r}"]
    target_value = raw.get(target)
    if target not in raw or target == name or isinstance(target_value, dict) and "same_as" in target_value:
        return None, [f"{loc}.same_as: {target!r} must be another, untied parameter of this space"]
    if PARAM_TYPES.get(target) is not PARAM_TYPES.get(name):
        return None, [f"{loc}.same_as: {name} and {target} take different types"]
    return target, []


def _check_tie(name: str, source: Searched | Scalar | None, target: str, loc: str) -> list[str]:
    """A tie's target, once parsed: unconditional, and its values valid for ``name`` too."""
    if isinstance(source, (FloatRange, IntRange, CategoricalChoice)) and source.when:
        # A conditional target may be inactive, and the tied parameter would then
        # silently fall back to the engine's default.
        return [f"{loc}: {target} is conditional (when: ...); tie to an unconditional parameter"]
    return [] if source is None else _check_values(name, loc, source)


def _parse_range(
    name: str, value: dict[str, Any], loc: str, raw: dict[str, Any]
) -> tuple[Searched | None, list[str]]:
    """``{type: float|int|categorical, ...}``: the range's own fields, then whether its kind
    fits the parameter, its ``when`` keys, and its values."""
    kind = value.get("type")
    cls = _SEARCHED_TYPES.get(kind)  # type: ignore[arg-type]
    if cls is None:
        return None, [f"{loc}.type: must be one of float, int, categorical (got {kind!r})"]
    try:
        entry = cls.model_validate(value)
    except ValidationError as err:
        return None, [_validation_problem(loc, e) for e in err.errors()]
    problem = _kind_problem(name, entry, loc)
    if problem:
        return None, [problem]
    return entry, _when_problems(name, entry, loc, raw) + _check_values(name, loc, entry)


def _validation_problem(loc: str, error: Any) -> str:
    sub = ".".join(str(p) for p in error["loc"])
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        msg = "unknown key (a range has type, low, high, log, step, choices, when)"
    return f"{loc}{'.' + sub if sub else ''}: {msg}"


def _kind_problem(name: str, entry: Searched, loc: str) -> str | None:
    """A range of the wrong kind for the parameter: a float range of an integer, a numeric
    range of a named choice, choices of the wrong type."""
    names = choices(name)
    want_int = PARAM_TYPES.get(name) is int
    if names is not None:
        if not isinstance(entry, CategoricalChoice):
            return f"{loc}: {name} takes one of {', '.join(names)}; use type: categorical"
        bad = [c for c in entry.choices if c not in names]
        return f"{loc}.choices: {name} takes {', '.join(names)}, got {bad}" if bad else None
    if want_int and isinstance(entry, FloatRange):
        return f"{loc}: {name} is an integer; use type: int or categorical"
    if isinstance(entry, CategoricalChoice):
        if want_int and not all(isinstance(c, int) and not isinstance(c, bool) for c in entry.choices):
            return f"{loc}.choices: {name} takes integers, got {entry.choices}"
        if not want_int and not all(
            isinstance(c, (int, float)) and not isinstance(c, bool) for c in entry.choices
        ):
            return f"{loc}.choices: {name} takes numbers, got {entry.choices}"
    return None


def _when_problems(name: str, entry: Searched, loc: str, raw: dict[str, Any]) -> list[str]:
    """Each ``when`` key is a config condition or a parameter of the space listed before
    this one: parameters are suggested in order, and a later one is not chosen yet (the
    condition would never hold)."""
    earlier = list(raw)[: list(raw).index(name)]
    problems = []
    for key in entry.when or {}:
        if key not in CONDITION_KEYS and key not in raw:
            problems.append(
                f"{loc}.when: unknown key {key!r}; use one of {', '.join(CONDITION_KEYS)} "
                "or a parameter of this space"
            )
        elif key in raw and key not in earlier and isinstance(raw[key], dict):
            problems.append(f"{loc}.when: {key} comes after {name} in the space; list it first")
    return problems


def _parse_fixed(name: str, value: Any, loc: str) -> tuple[Scalar | None, list[str]]:
    """A fixed value: one of a named choice's names, or a number of the parameter's type."""
    if isinstance(value, (bool, list)) or value is None:
        return None, [f"{loc}: give a number or a range such as {{type: float, low: ..., high: ...}}"]
    names = choices(name)
    if names is not None:
        if value not in names:
            return None, [f"{loc}: {name} takes one of {', '.join(names)}, got {value!r}"]
        return value, []
    if PARAM_TYPES.get(name) is int and not isinstance(value, int):
        return None, [f"{loc}: {name} is an integer, got {value!r}"]
    if isinstance(value, str):
        return None, [f"{loc}: {name} takes a number, got {value!r}"]
    return value, _check_values(name, loc, value)


def _check_values(name: str, loc: str, entry: Searched | Scalar) -> list[str]:
    """The ends of a range (or the fixed value) must be valid for the engine."""
    candidates: list[Any]
    if isinstance(entry, (FloatRange, IntRange)):
        candidates = [entry.low, entry.high]
    elif isinstance(entry, CategoricalChoice):
        candidates = list(entry.choices)
    else:
        candidates = [entry]
    for value in candidates:
        problem = check_value(name, value)
        if problem:
            return [f"{loc}: {problem}"]
    return []
