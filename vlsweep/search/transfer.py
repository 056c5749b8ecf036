"""Sweep small, train big: carry a finished study of a small model of a family to a sweep
of a larger one (``search.transfer_from``, ``vlsweep launch --from``).

The target sweep runs the source study's Pareto front first, its knee leading, each point
re-run on the target model (a value outside the target's space clipped to its bounds,
and said). Then it searches on, and the sampler sees the source's completed trials as
prior knowledge: they are put before the target's own trials in what the sampler reads
(``sampling.OneReadPerAsk``), never written to the target study, so no front, dashboard
or ``optuna.load_study`` of the target shows them. TPE and GP learn from them; NSGA-II
builds its populations from its own generations and leaves them aside.

We write this ourselves: Optuna's warm starts (``enqueue_trial``, ``add_trial``) make
trials of the study, which is what a carried front must not become, and no sampler takes
prior observations from another model as an argument.

Before anything runs the two studies are held to one another: the same objectives and
directions, the same model family, and the same vision configuration (its merger's
output width, which follows the language model, apart). A learning-rate rule may rescale
what is carried (``rescale``): ``none``, or ``hidden``, the language model's rate times
the source's language-model width over the target's (Adam's width rule of muP, Yang et
al. 2022: a hidden layer's rate goes as 1/its input width), the shared vision tower's and
the projector's (whose input is the tower's) kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from vlsweep import outcomes, pareto, storages
from vlsweep.errors import UserInputError

if TYPE_CHECKING:
    from vlsweep.search.plan import SweepPlan

CARRIED_ATTR = outcomes.CARRIED_ATTR
# The rate the "hidden" rule scales with the language model's width: muP's Adam rule goes
# by a layer's input width, and only the language model's grows (the merger takes the
# vision tower's fixed width in; the tower is shared).
_WIDTH_SCALED = ("lr_llm",)
# Vision-config keys that follow the language model (the merger's output width), by family.
_FOLLOWS_LLM = {
    "qwen2_vl": {"hidden_size"},
    "qwen2_5_vl": {"out_hidden_size"},
    "qwen3_vl": {"out_hidden_size"},
    "qwen3_vl_moe": {"out_hidden_size"},
}
# Samplers that learn from prior trials. NSGA-II reads its generations by list position
# (trial number = index), which trials put before the study's own would shift.
PRIOR_SAMPLERS = ("tpe", "gp")


@dataclass
class Source:
    """The source study, read once: its objectives, completed trials, front and config."""

    name: str
    metric_names: list[str]
    directions: list[str]
    complete: list[FrozenTrial]
    front: list[FrozenTrial]
    config: dict[str, Any]

    @classmethod
    def of(cls, study: optuna.Study) -> Source:
        trials = study.get_trials(deepcopy=False)
        directions = [d.name.lower() for d in study.directions]
        return cls(
            name=study.study_name,
            metric_names=list(study.metric_names or [f"value{i}" for i in range(len(directions))]),
            directions=directions,
            complete=[t for t in trials if t.state == TrialState.COMPLETE and t.values],
            front=sorted(outcomes.pareto_front(study, trials), key=lambda t: t.number),
            config=study.user_attrs.get("config") or {},
        )


@dataclass
class Carried:
    """What a sweep carries from its source: the points it runs first, and the trials its
    sampler sees as prior knowledge."""

    source: Source
    points: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)  # (params, user attrs)
    prior: list[FrozenTrial] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def open_source(study: str, storage_url: str) -> Source:
    """The source study, read once; a clear error when it is not there."""
    try:
        return Source.of(storages.load_existing(storage_url, study))
    except UserInputError as err:
        raise UserInputError(f"search.transfer_from: {err.problems[0]}") from None


def _model_config(recorded_model: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    from vlsweep import demo
    from vlsweep.config import ModelConfig
    from vlsweep.trials import resolve_source

    model = demo.resolve_model(ModelConfig.model_validate(recorded_model))
    return AutoConfig.from_pretrained(
        resolve_source(model), trust_remote_code=model.trust_remote_code, revision=model.revision
    )


def _vision(hf_config: Any) -> dict[str, Any]:
    """The vision tower's architecture: its config's own keys (not the ones every config
    has, such as ``return_dict`` or ``initializer_range``), less the merger's output width
    where it follows the language model."""
    from transformers import PretrainedConfig

    vision = getattr(hf_config, "vision_config", None)
    if vision is None:
        return {}
    generic = set(PretrainedConfig().to_dict()) | {
        "initializer_range",
        "_name_or_path",
        "transformers_version",
    }
    follows = _FOLLOWS_LLM.get(hf_config.model_type, set())
    return {k: v for k, v in vision.to_dict().items() if k not in generic | follows}


def hidden_size(hf_config: Any) -> int:
    return int(hf_config.get_text_config().hidden_size)


def check_compatible(
    source: Source, objectives: list[tuple[str, str]], target_model: dict[str, Any]
) -> tuple[Any, Any]:
    """Exit 2 (naming what differs) unless the source study and the target sweep share
    objectives, model family and vision configuration. Returns (source, target) configs."""
    problems = []
    theirs = list(zip(source.metric_names, source.directions, strict=True))
    if theirs != objectives:
        problems.append(
            f"search.transfer_from: the studies' objectives differ: {source.name!r} has "
            f"{_shown(theirs)}, this sweep {_shown(objectives)}; carry between sweeps of the same objectives"
        )
    recorded = source.config.get("model")
    if not recorded:
        raise UserInputError(
            problems
            + [f"search.transfer_from: study {source.name!r} records no sweep config (not a vlsweep sweep?)"]
        )
    configs = []
    for whose, model in ((f"study {source.name!r}'s model", recorded), ("this sweep's model", target_model)):
        try:
            configs.append(_model_config(model))
        except Exception as exc:  # noqa: BLE001 - any unreadable config is the same user problem
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise UserInputError(
                problems
                + [
                    f"search.transfer_from: cannot read {whose}'s config ({model.get('name_or_path')}) "
                    f"to compare the two: {first}"
                ]
            ) from None
    src, tgt = configs
    if src.model_type != tgt.model_type:
        problems.append(
            f"search.transfer_from: the model families differ: {source.name!r} swept a {src.model_type} "
            f"({recorded.get('name_or_path')}), this sweep a {tgt.model_type}; carry within one family"
        )
    else:
        a, b = _vision(src), _vision(tgt)
        differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        if differ:
            problems.append(
                "search.transfer_from: the vision configurations differ in "
                + ", ".join(f"{k} ({a.get(k)!r} against {b.get(k)!r})" for k in differ)
                + "; a carried front assumes the same vision tower"
            )
    if problems:
        raise UserInputError(problems)
    return src, tgt


def _shown(objectives: list[tuple[str, str]]) -> str:
    return ", ".join(f"{n} ({d})" for n, d in objectives)


def _fit(name: str, value: Any, dist: Any) -> tuple[Any, str | None]:
    """``value`` inside ``dist``: a number put on its step and clipped to its bounds
    (said), a choice kept if the target offers it (else dropped, said)."""
    if isinstance(dist, (FloatDistribution, IntDistribution)):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None, f"{name}={value!r} is not a number here: sampled instead"
        fitted = min(max(value, dist.low), dist.high)
        step = dist.step
        if step is not None:
            fitted = dist.low + math.floor((fitted - dist.low) / step + 0.5) * step
            fitted = min(fitted, dist.low + math.floor((dist.high - dist.low) / step + 1e-9) * step)
        if isinstance(dist, IntDistribution):
            fitted = int(fitted)
        if fitted != value:
            return (
                fitted,
                f"{name} {value:.4g} moved to {fitted:.4g} (the target's {dist.low:g}..{dist.high:g}"
                + (f", step {step:g})" if step is not None else ")"),
            )
        return value, None
    if isinstance(dist, CategoricalDistribution):
        if value in dist.choices:
            return value, None
        return (
            None,
            f"{name}={value!r} is not among the target's choices {list(dist.choices)}: sampled instead",
        )
    return value, None


def _mapped(
    trial: FrozenTrial, distributions: dict[str, Any], rescale: str, width_ratio: float
) -> tuple[dict[str, Any], list[str]]:
    params, notes = {}, []
    for name, dist in distributions.items():
        if name not in trial.params:
            continue
        value = trial.params[name]
        if rescale == "hidden" and name in _WIDTH_SCALED:
            value = value * width_ratio
        value, note = _fit(name, value, dist)
        if note:
            notes.append(note)
        if value is not None:
            params[name] = value
    return params, notes


def carry(
    source: Source,
    distributions: dict[str, Any],
    *,
    rescale: str,
    width_ratio: float,
) -> Carried:
    """The source's front (knee first) as points to run, and its completed trials as
    prior knowledge, in the target's space."""
    out = Carried(source=source)
    front = source.front
    searched_here = set(distributions)
    if front:
        k = front[pareto.knee([t.values for t in front], source.directions)]
        for t in [k, *(t for t in front if t.number != k.number)]:
            params, notes = _mapped(t, distributions, rescale, width_ratio)
            attrs = {
                "study": source.name,
                "trial": t.number,
                "knee": t.number == k.number,
                "values": dict(zip(source.metric_names, t.values, strict=True)),
                "clipped": notes,
            }
            out.points.append((params, {CARRIED_ATTR: attrs}))
            out.notes += [f"source trial #{t.number}: {n}" for n in notes]
        unset = sorted(searched_here - {n for params, _ in out.points for n in params})
        if unset:
            out.notes.append(
                f"{', '.join(unset)}: searched here, not by {source.name!r} (or not carried): "
                "sampled for the carried points"
            )
    for i, t in enumerate(source.complete):
        params, notes = _mapped(t, distributions, rescale, width_ratio)
        # Knowledge is what was measured: a trial whose values had to be moved into this
        # space, or that lacks a parameter searched here, is no observation of this space.
        if notes or set(params) != searched_here:
            continue
        prior = optuna.trial.create_trial(
            params=params,
            distributions={n: distributions[n] for n in params},
            values=list(t.values),
            system_attrs={k: v for k, v in t.system_attrs.items() if k.split(":")[0] == "constraints"},
            state=TrialState.COMPLETE,
        )
        # Numbers below the target's own (which start at 0): samplers tell trials apart
        # by number, and nothing of the target's is ever numbered so.
        prior.number = -(i + 1)
        out.prior.append(prior)
    return out


def prepare(plan: SweepPlan, storage_url: str, log: Callable[[str], None], *, new: bool) -> Carried | None:
    """The sweep's ``search.transfer_from``, read and checked: None when it has none.
    ``new``: the target study has no trials yet, so the carried points will be queued."""
    spec = plan.cfg.search.transfer_from
    if spec is None:
        return None
    source_url = spec.storage or storage_url
    if spec.study == plan.cfg.name and source_url == storage_url:
        raise UserInputError(
            f"search.transfer_from.study: {spec.study!r} is this sweep's own study; name the smaller "
            "model's study to carry"
        )
    source = open_source(spec.study, source_url)
    if not source.front:
        raise UserInputError(
            f"search.transfer_from.study: study {source.name!r} has no complete, feasible trial to carry "
            f"({len(source.complete)} complete); let its sweep finish first"
        )
    objectives: list[tuple[str, str]] = list(zip(plan.objective_names, plan.directions, strict=True))
    src, tgt = check_compatible(source, objectives, plan.recorded_config["model"])
    ratio = hidden_size(src) / hidden_size(tgt)
    carried = carry(source, plan.distributions, rescale=spec.rescale, width_ratio=ratio)
    learns = plan.cfg.search.sampler in PRIOR_SAMPLERS
    if not learns:
        carried.prior = []
    rule = f"; learning rates rescaled ({spec.rescale}: x{ratio:.3g} for {', '.join(_WIDTH_SCALED)})"
    knowledge = (
        f"its {len(carried.prior)} of {len(source.complete)} completed trials that lie in this space as "
        "the sampler's prior knowledge"
        if learns
        else f"no prior knowledge (search.sampler {plan.cfg.search.sampler} takes none; tpe and gp do)"
    )
    if new:
        log(
            f"carrying study {source.name!r} ({src.model_type}, language model {hidden_size(src)} wide) "
            f"to this {hidden_size(tgt)}-wide one: its front of {len(carried.points)} point(s) first, "
            f"knee leading, and {knowledge}" + (rule if spec.rescale != "none" else "")
        )
        for note in carried.notes:
            log(f"  {note}")
    else:
        log(f"study {source.name!r} carried: {knowledge}")
    return carried
