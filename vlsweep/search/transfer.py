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
what is carried (``rescale``): ``none``, or ``hidden``, the language model's and the
projector's rates times the source's language-model width over the target's (Adam's
width rule of muP, Yang et al. 2022: a hidden layer's rate goes as 1/width), the shared
vision tower's rate kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from vlsweep import outcomes, pareto, storages
from vlsweep.errors import UserInputError

# The user attr a carried point's target trial holds: where it came from and what it
# measured there ({"study", "trial", "knee", "values": {metric: value}, "clipped": [...]});
# results.carried_rows reads it (results sits above this layer, so each names it).
CARRIED_ATTR = "carried"
RESCALE_RULES = ("none", "hidden")
# Rates the "hidden" rule scales with the language model's width; the vision tower's is
# the shared tower's own and stays.
_WIDTH_SCALED = ("lr_llm", "lr_projector")
# Vision-config keys that follow the language model (the merger's output width).
_FOLLOWS_LLM = {"hidden_size", "out_hidden_size", "text_hidden_size"}
_CONFIG_NOISE = {"_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype"}


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
        raise UserInputError(f"search.transfer_from.study: {err.problems[0]}") from None


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
    vision = getattr(hf_config, "vision_config", None)
    if vision is None:
        return {}
    return {k: v for k, v in vision.to_dict().items() if k not in _FOLLOWS_LLM | _CONFIG_NOISE}


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
    try:
        src, tgt = _model_config(recorded), _model_config(target_model)
    except (OSError, UserInputError) as exc:
        raise UserInputError(
            problems + [f"search.transfer_from: cannot read the models' configs to compare them ({exc})"]
        ) from None
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
    """``value`` inside ``dist``: a number clipped to its bounds (said), a choice kept if
    the target offers it (else dropped, said)."""
    if isinstance(dist, (FloatDistribution, IntDistribution)):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None, f"{name}={value!r} is not a number here: sampled instead"
        clipped = min(max(value, dist.low), dist.high)
        if isinstance(dist, IntDistribution):
            clipped = int(round(clipped))
        if clipped != value:
            return (
                clipped,
                f"{name} {value:.4g} clipped to {clipped:.4g} (the target's {dist.low:g}..{dist.high:g})",
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
    for i, t in enumerate(source.complete):
        params, _ = _mapped(t, distributions, rescale, width_ratio)
        if not params:
            continue
        prior = optuna.trial.create_trial(
            params=params,
            distributions={n: distributions[n] for n in params},
            values=list(t.values),
            system_attrs={k: v for k, v in t.system_attrs.items() if k == "constraints"},
            state=TrialState.COMPLETE,
        )
        # Numbers below the target's own (which start at 0): samplers tell trials apart
        # by number, and nothing of the target's is ever numbered so.
        prior.number = -(i + 1)
        out.prior.append(prior)
    return out


def prepare(plan: Any, storage_url: str, log: Any) -> Carried | None:
    """The sweep's ``search.transfer_from``, read and checked: None when it has none."""
    spec = plan.cfg.search.transfer_from
    if spec is None:
        return None
    source = open_source(spec.study, spec.storage or storage_url)
    objectives = list(zip(plan.objective_names, plan.directions, strict=True))
    src, tgt = check_compatible(source, objectives, plan.recorded_config["model"])
    ratio = hidden_size(src) / hidden_size(tgt)
    carried = carry(source, plan.distributions, rescale=spec.rescale, width_ratio=ratio)
    feasible = sum(outcomes.feasible(t) for t in source.complete)
    rule = f"; learning rates rescaled ({spec.rescale}: x{ratio:.3g} for {', '.join(_WIDTH_SCALED)})"
    log(
        f"carrying study {source.name!r} ({src.model_type}, language model {hidden_size(src)} wide) "
        f"to this {hidden_size(tgt)}-wide one: its front of {len(carried.points)} point(s) first, "
        f"knee leading, and its {len(carried.prior)} completed trials ({feasible} feasible) as "
        "the sampler's prior knowledge" + (rule if spec.rescale != "none" else "")
    )
    for note in carried.notes:
        log(f"  {note}")
    return carried
