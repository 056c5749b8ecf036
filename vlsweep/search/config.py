"""The sweep config: what ``vlsweep launch`` reads (docs/config.md).

It extends a train config (model, data, budget, lora, optim, seed) with the search:
objectives, constraints, space, sampler, trial budget, resources, storage and Ray
address. Every problem in the file (schema, space, constraints) is reported at once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, StrictBool, ValidationError, field_validator, model_validator

from vlsweep.config import (
    BUILTIN,
    DEMO_DATA,
    SPLITS,
    RunConfig,
    TrainConfig,
    _Strict,
    format_validation_error,
    read_yaml,
)
from vlsweep.errors import QUANTIZE_HINT, UserInputError
from vlsweep.metrics import METRICS, OBJECTIVES, RETAIN
from vlsweep.params import PARAM_NAMES, STRATEGIES, TrialParams, strategy_space
from vlsweep.spaces import CategoricalChoice, FloatRange, Space, parse_space, with_strategies

_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")
SWEEP_KEYS = {
    "search",
    "space",
    "strategies",
    "objectives",
    "constraints",
    "resources",
    "ray",
    "storage",
    "logging",
    "artifacts",
}
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class Objective(_Strict):
    name: str
    direction: Literal["minimize", "maximize"] | None = None

    @model_validator(mode="after")
    def _known(self) -> Objective:
        if self.name not in OBJECTIVES:
            raise ValueError(f"unknown metric {self.name!r}; choose from {', '.join(OBJECTIVES)}")
        if self.direction is None:
            self.direction = METRICS[self.name].direction
        return self


def _objectives(value: Any) -> Any:
    if isinstance(value, list):
        return [{"name": v} if isinstance(v, str) else v for v in value]
    return value


class WarmStart(_Strict):
    """A known point: with ``values`` it is added as a finished trial, without it is run first."""

    params: dict[str, Any]
    values: dict[str, float] | None = None


def _storage_without_password(value: str | None) -> str | None:
    """A storage URL a config may hold: an SQLAlchemy URL with no password (the study
    records its config, so a password there would be stored with every study)."""
    if value is not None:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("not an SQLAlchemy URL (e.g. sqlite:///vlsweep.db)") from None
        if url.password:
            raise ValueError(
                "a config file must not hold a password: drop it from the URL and set "
                "PGPASSWORD (or VLSWEEP_STORAGE) in the environment"
            )
    return value


class TransferFrom(_Strict):
    """A finished study of a smaller model of the family to carry (search/transfer.py)."""

    study: str
    # Where it lives; none: the sweep's own storage. Recorded with the study's config, so
    # it may hold no password (PGPASSWORD supplies one).
    storage: str | None = None
    # A learning-rate rule for the carried points and prior: none, or hidden (the language
    # model's and projector's rates times source width / target width).
    rescale: Literal["none", "hidden"] = "none"

    @field_validator("storage")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        return _storage_without_password(value)


class SearchConfig(_Strict):
    trials: int = Field(default=16, ge=1)
    max_concurrent: int = Field(default=2, ge=1)
    sampler: Literal["tpe", "nsga2", "gp", "random"] = "tpe"
    seed: int | None = 0
    # none | asha (Ray's, on the first objective) | mo-asha (multi-objective, vlsweep's).
    early_stopping: Literal["none", "asha", "mo-asha"] = "none"
    # Rungs at grace_steps * reduction_factor**k training steps below budget.steps;
    # grace_steps defaults to a fifth of budget.steps (schedulers.GRACE_SHARE: where the
    # demo's early values first rank configs as the final ones do).
    grace_steps: int | None = Field(default=None, ge=1)
    reduction_factor: int = Field(default=3, ge=2)
    # With early stopping and the TPE sampler: propose from what stopped trials measured
    # at the rungs (a model at the highest rung with enough trials, as BOHB does) rather
    # than from the few full-budget trials alone.
    learn_from_rungs: bool = True
    # Stop the sweep after this many seconds (running trials are stopped and end FAIL,
    # "stopped: search.time_budget_s ... reached"); the trial budget still caps the count.
    time_budget_s: float | None = Field(default=None, gt=0)
    # Stop the sweep when the first N trials to finish all fail with the same error (a
    # broken model path, dataset or GPU setup); 0 turns this off.
    fail_fast: int = Field(default=3, ge=0)
    # Run the un-tuned baseline (vlsweep.params.BASELINE) first: trial 0, or right after a
    # carried study's points (transfer_from).
    baseline: bool = True
    # The same points for the same seed however the trials' completions interleave: trial
    # k is proposed from trials 0..k-max_concurrent as they ended (the ones in flight count
    # as running), waiting for those to end if need be. Costs idle slots when trial
    # durations differ a lot; the demo turns it on.
    reproducible: bool = False
    warm_start: list[WarmStart] = Field(default_factory=list)
    # Carry a study of a smaller model of the family: its front runs first, its trials
    # inform the sampler without becoming trials of this study (docs/transfer.md).
    transfer_from: TransferFrom | None = None


class ResourcesConfig(_Strict):
    cpus_per_trial: float = Field(default=1.0, gt=0)
    gpus_per_trial: float = Field(default=0.0, ge=0)
    # Ray's logical memory resource per trial (GiB); none = no memory request.
    memory_gb_per_trial: float | None = Field(default=None, gt=0)
    # Memory of one GPU (GiB), which the memory estimate is held against (times
    # gpus_per_trial); none = this machine's GPU if it has one. Ray has no per-GPU memory
    # resource, so a cluster of other GPUs than the launching machine's declares it here.
    gpu_memory_gb: float | None = Field(default=None, gt=0)
    # Ray runs a trial again after its worker died on a live node (OOM-killed, crashed)
    # this many times; on a multi-worker trial, a train worker's death too (Ray Train's own
    # retries stay off). A trial's own error (NaN, out of memory) is never run again.
    retries: int = Field(default=1, ge=0)
    # ... and after the node it ran on was lost or preempted (killed, drained by its cloud)
    # this many times, apart from retries: elsewhere, from its last checkpoint
    # (budget.checkpoint_steps) when it has one.
    node_loss_retries: int = Field(default=3, ge=0)
    # Keep workers (and the loaded base model) between trials (one-worker trials only: a
    # multi-worker trial's ranks are Ray Train's, started for each trial).
    reuse_actors: bool = True
    # Ray Train workers per trial (data-parallel, torch DDP): each holds the whole model
    # and trains on its share of budget.batch_size. With more than one, cpus_per_trial,
    # gpus_per_trial and memory_gb_per_trial are each worker's share.
    train_workers: int = Field(default=1, ge=1)
    # How the train workers split the work: ddp (each holds the model, the batch is split)
    # or fsdp (each also holds only 1/train_workers of every parameter: for a base that
    # does not fit one GPU).
    strategy: Literal["ddp", "fsdp"] = "ddp"

    @field_validator("gpus_per_trial")
    @classmethod
    def _one_device(cls, value: float) -> float:
        # A train worker trains on one device (the engine loads the base whole onto it):
        # Ray would reserve the other GPUs and they would idle for the whole sweep.
        if value > 1:
            raise ValueError(
                f"{value:g} GPUs per trial would leave {value - 1:g} of them idle: each train worker "
                f"trains on one GPU; to train each trial on {value:g} GPUs, set gpus_per_trial: 1 and "
                f"train_workers: {value:g} (data-parallel, docs/cluster.md), or use 1 (or a fraction, 0.5, "
                "to run two trials on each GPU). For a model whose trial does not fit one GPU: lower "
                f"budget.batch_size, set model.gradient_checkpointing: true, {QUANTIZE_HINT}, or train "
                "fewer modules (lora.vision: false)"
            )
        return value


class RayConfig(_Strict):
    # None: start a local Ray on this machine (or, inside `ray job submit`, join the job's
    # cluster); "auto" or "ray://host:10001": join a running cluster.
    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)
    num_gpus: int | None = Field(default=None, ge=0)
    # Where Ray Tune keeps the experiment and each trial's results (TensorBoard files):
    # a URI (s3://, gs://, ...) or a path; default <output_dir>/ray. On a cluster of
    # several nodes a path must be on storage every node mounts: say so with
    # shared_storage (it also covers output_dir, where trials write their adapters).
    storage_path: str | None = None
    shared_storage: bool = False
    # Whether an autoscaler may add nodes (then a trial that fits no node waits for one
    # instead of being an error); none = ask the cluster (Ray's cluster launcher, KubeRay).
    autoscaling: bool | None = None


class MlflowConfig(_Strict):
    tracking_uri: str | None = None  # None: MLflow's own default (./mlruns or $MLFLOW_TRACKING_URI)
    experiment_name: str | None = None  # None: the study name


class WandbConfig(_Strict):
    project: str | None = None  # None: the study name
    group: str | None = None


class LoggingConfig(_Strict):
    """Where each trial's training curves go, through Ray Tune's logger callbacks."""

    # TensorBoard event files in each Ray trial directory (runs/NAME/ray/...).
    tensorboard: bool = True
    mlflow: MlflowConfig | None = None  # needs `pip install mlflow`
    wandb: WandbConfig | None = None  # needs `pip install wandb` and a logged-in account


class ArtifactsConfig(_Strict):
    # Where every finished trial's files (adapter, metrics.json, predictions.jsonl,
    # train_log.jsonl) are stored as Optuna artifacts: a directory, or s3://BUCKET; "none"
    # stores nothing. Default: beside an SQLite study file (vlsweep.db ->
    # vlsweep-artifacts/), else <output_dir>/artifacts. On a cluster of several nodes every
    # worker writes here: give s3://BUCKET, or a shared path with ray.shared_storage: true.
    store: str | None = None
    # Retention: the files of the Pareto front's trials and of the keep_last most recently
    # finished ones are kept, the others removed as trials finish; null keeps all.
    keep_last: int | None = Field(default=10, ge=0)

    @field_validator("store")
    @classmethod
    def _store(cls, value: str | None) -> str | None:
        from vlsweep.artifacts import url_problem

        problem = value and url_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class StrategiesConfig(_Strict):
    """Which of the practitioners' strategies the sweep searches (docs/strategies.md). Each
    key adds its parameters to the space; off, they keep their off value."""

    # StrictBool: "on" or 1 would pass a plain bool and leave the space as it was.
    loss_balance: StrictBool = False  # loss_balance in static/uncertainty/famo/pcgrad/upgrad
    oversample: StrictBool = False  # hard_oversample: more of the hard grounding samples
    curriculum: StrictBool = False  # curriculum_ratio: easy to hard over the steps
    rotation: StrictBool = False  # rotation_period, rotation_share: the dominant task in phases
    vision_first: StrictBool = False  # vision_first_ratio: the vision side trains alone first
    lora_layout: StrictBool = False  # lora_r_vision, lora_r_projector, lora_targets_llm/vision

    def on(self) -> list[str]:
        return [k for k in STRATEGIES if getattr(self, k)]


class SweepConfig(RunConfig):
    name: str = "sweep"
    objectives: list[Objective] = Field(
        default_factory=lambda: [Objective(name="cer"), Objective(name="iou")]
    )
    # e.g. ["cer <= 0.2"]: trials outside are infeasible and never on the front.
    constraints: list[str] = Field(default_factory=list)
    space: dict[str, Any] | None = None
    strategies: StrategiesConfig = Field(default_factory=StrategiesConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    artifacts: ArtifactsConfig = Field(default_factory=ArtifactsConfig)
    # SQLAlchemy URL; else --storage, $VLSWEEP_STORAGE, sqlite:///vlsweep.db.
    storage: str | None = None

    _coerce_objectives = field_validator("objectives", mode="before")(_objectives)

    @model_validator(mode="before")
    @classmethod
    def _strategies_in_space(cls, raw: Any) -> Any:
        # The space the study records and every reader replays is the one searched, with
        # the strategies' parameters in it.
        return _effective(raw)

    @model_validator(mode="after")
    def _vision_side_trains(self) -> SweepConfig:
        entry = (self.space or {}).get("vision_first_ratio", 0.0)
        if entry != 0.0 and not self.lora.vision and self.lora.projector == "frozen":
            raise ValueError(
                "vision_first_ratio (strategies.vision_first or space) trains the vision side "
                "first, but lora.vision is false and lora.projector is frozen: turn one on, or "
                "vision_first off"
            )
        return self

    @model_validator(mode="after")
    def _shardable(self) -> SweepConfig:
        if self.resources.strategy != "fsdp":
            return self
        problems = []
        if self.resources.train_workers < 2:
            problems.append(
                "it shards the model over the train workers: set resources.train_workers to 2 or more"
            )
        if self.model.dtype == "float16":
            problems.append(
                "model.dtype float16 trains with a loss scaler, whose overflow check would see one "
                "rank's shard only: use bfloat16 (or float32)"
            )
        if self.model.quantization is not None:
            problems.append(
                "a quantized base (model.quantization) is not sharded by FSDP here: use strategy: ddp, "
                "or train the unquantized base sharded"
            )
        space = self._parse()[0]
        searched = space.searched.get("loss_balance") if space is not None else None
        fixed = space.fixed.get("loss_balance") if space is not None else None
        choices = getattr(searched, "choices", None) or ([fixed] if fixed is not None else [])
        jacobian = sorted({str(c) for c in choices} & {"pcgrad", "upgrad"})
        if jacobian:
            problems.append(
                f"loss_balance {', '.join(jacobian)} combines each task's whole gradient, which FSDP keeps "
                "sharded: leave them out of the space (strategies.loss_balance) or use strategy: ddp"
            )
        if problems:
            raise ValueError("resources.strategy: fsdp: " + "; ".join(problems))
        return self

    @model_validator(mode="after")
    def _a_sample_per_worker(self) -> SweepConfig:
        workers, batch = self.resources.train_workers, self.budget.batch_size
        gpus = self.resources.gpus_per_trial
        if workers > 1 and gpus not in (0, 1):
            raise ValueError(
                f"resources.gpus_per_trial ({gpus:g}) with resources.train_workers ({workers}): each train "
                "worker needs a GPU of its own (two ranks on one GPU are refused by NCCL); use 1, or 0 "
                "to train on the CPU"
            )
        if workers > batch:
            raise ValueError(
                f"resources.train_workers ({workers}) is above budget.batch_size ({batch}): the "
                "train workers split each batch, so each needs at least one sample; raise "
                f"budget.batch_size to {workers} or more, or lower resources.train_workers"
            )
        if workers > 1 and self.budget.checkpoint_steps:
            # Not built yet: the ranks' state (a sharded one above all) would be saved through
            # Ray Train's checkpoints, whose resume inside a Tune trial is another path.
            raise ValueError(
                f"budget.checkpoint_steps with resources.train_workers ({workers}): a multi-worker "
                "trial does not checkpoint yet (it runs again from step 0 after a lost node); remove "
                "budget.checkpoint_steps, or use 1 train worker"
            )
        return self

    @field_validator("name")
    @classmethod
    def _study_name(cls, value: str) -> str:
        if not STUDY_NAME.match(value):
            raise ValueError("use letters, digits, '_', '.' and '-' (it names the study and a directory)")
        return value

    @field_validator("objectives")
    @classmethod
    def _cer_iou_first(cls, value: list[Objective]) -> list[Objective]:
        names = [o.name for o in value]
        if names[:2] != ["cer", "iou"]:
            raise ValueError("the objectives start with cer and iou (more may follow)")
        if len(set(names)) != len(names):
            raise ValueError(f"an objective is listed twice: {names}")
        return value

    @model_validator(mode="after")
    def _rungs_below_budget(self) -> SweepConfig:
        s = self.search
        if s.early_stopping != "none" and s.grace_steps is not None and s.grace_steps >= self.budget.steps:
            raise ValueError(
                f"search.grace_steps ({s.grace_steps}) must be below budget.steps ({self.budget.steps}): "
                "the first rung comes before the end of the trial"
            )
        return self

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, value: list[str]) -> list[str]:
        for c in value:
            m = _CONSTRAINT.match(c)
            if not m:
                raise ValueError(f"{c!r}: write a constraint as 'metric <= number' or 'metric >= number'")
            if m.group(1) not in OBJECTIVES:
                raise ValueError(f"{c!r}: unknown metric {m.group(1)!r}; choose from {', '.join(OBJECTIVES)}")
            _bound(c)
        return value

    @field_validator("storage")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        return _storage_without_password(value)

    # The space and the constraints, parsed once when the config is validated (the raw
    # forms above are what the study records and every reader replays).
    # (A copy with another space or other constraints, model_copy(update=...), parses its own.)
    _parsed: tuple[Any, Any, Space | None, list[str], list[tuple[str, str, float]]] | None = PrivateAttr(
        default=None
    )

    @model_validator(mode="after")
    def _parse_once(self) -> SweepConfig:
        self._parse()
        return self

    def _parse(self) -> tuple[Space | None, list[str], list[tuple[str, str, float]]]:
        if (
            self._parsed is None
            or self._parsed[0] is not self.space
            or self._parsed[1] is not self.constraints
        ):
            space, problems = parse_space(self.space)
            bounds = [_bound(c) for c in self.constraints]
            self._parsed = (self.space, self.constraints, None if problems else space, problems, bounds)
        return self._parsed[2:]

    @property
    def search_space(self) -> Space:
        """The parsed ``space`` (the default space when none is given)."""
        space, problems, _ = self._parse()
        if space is None:  # load_sweep_config reports these with the file's name
            raise UserInputError(problems)
        return space

    @property
    def constraint_bounds(self) -> list[tuple[str, str, float]]:
        """Each constraint as (metric, "<=" or ">=", bound)."""
        return list(self._parse()[2])

    def settings(self) -> dict[str, Any]:
        """Config keys a space condition may name."""
        return {
            "lora.vision": self.lora.vision,
            "lora.projector": self.lora.projector,
            "lora.use_rslora": self.lora.use_rslora,
        }

    def train_config(self, params: TrialParams | None = None) -> TrainConfig:
        """The train config a trial runs (what ``vlsweep export`` writes, with its params)."""
        shared = {f: getattr(self, f) for f in RunConfig.model_fields if f != "output_dir"}
        return TrainConfig(name=self.name, params=params or TrialParams(), **shared)


def _bound(constraint: str) -> tuple[str, str, float]:
    m = _CONSTRAINT.match(constraint)
    if m is None:  # the field's validator ran first
        raise ValueError(f"{constraint!r}: write a constraint as 'metric <= number' or 'metric >= number'")
    return m.group(1), m.group(2), float(m.group(3))


def _effective(raw: Any) -> Any:
    """``raw`` with its space widened by the strategies it turns on (as given otherwise)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("strategies"), dict):
        return raw
    on = _strategies_on(raw)
    return {**raw, "space": with_strategies(raw.get("space"), on)} if on else raw


def _strategies_on(raw: dict[str, Any]) -> list[str]:
    strategies = raw.get("strategies")
    if not isinstance(strategies, dict):
        return []
    return [k for k, v in strategies.items() if v is True and k in STRATEGIES]


def _fixed_but_searched(raw: Any) -> list[str]:
    """A space entry that fixes a parameter a strategy turned on searches: which is meant?"""
    if not isinstance(raw, dict) or not isinstance(raw.get("space"), dict):
        return []
    space = raw["space"]
    return [
        f"space.{name}: fixed at {space[name]!r}, but strategies.{key} searches it; give a "
        "range, or turn the strategy off"
        for key in _strategies_on(raw)
        for name in strategy_space(key)
        if name in space and not isinstance(space[name], dict)
    ]


def load_sweep_config(path: str | Path, data: dict[str, Any] | None = None) -> tuple[SweepConfig, Path]:
    """Load and validate a sweep config; returns it with the directory paths are relative to."""
    path = Path(path)
    raw = read_yaml(path) if data is None else data
    problems: list[str] = []
    cfg = None
    try:
        cfg = SweepConfig.model_validate(raw)
    except ValidationError as err:
        problems += format_validation_error(err, str(path))
    _, space_problems = parse_space(_effective(raw).get("space") if isinstance(raw, dict) else None)
    problems += [f"{path}: {p}" for p in space_problems + _fixed_but_searched(raw)]
    if isinstance(raw, dict):
        for i, point in enumerate((raw.get("search") or {}).get("warm_start") or []):
            if isinstance(point, dict) and isinstance(point.get("params"), dict):
                unknown = [k for k in point["params"] if k not in PARAM_NAMES]
                if unknown:
                    problems.append(f"{path}: search.warm_start.{i}.params: unknown parameter(s) {unknown}")
    if cfg is not None and not problems:
        problems += [f"{path}: {p}" for p in _warm_start_problems(cfg) + _float16_problems(cfg)]
    if problems or cfg is None:
        raise UserInputError(problems)
    return cfg, path.resolve().parent


# The loss balances whose objective a float16 loss scaler changes (Balance.scale_equivariant).
NOT_SCALE_EQUIVARIANT = ("uncertainty", "famo")


def _float16_problems(cfg: SweepConfig) -> list[str]:
    """model.dtype float16 trains with a loss scaler, which two loss balances cannot take:
    said before the sweep, rather than as failed trials (the trial engine checks again)."""
    if cfg.model.dtype != "float16":
        return []
    space = cfg.search_space
    entry = space.searched.get("loss_balance")
    offered = list(entry.choices) if entry is not None and hasattr(entry, "choices") else []
    offered += [space.fixed["loss_balance"]] if "loss_balance" in space.fixed else []
    bad = [b for b in NOT_SCALE_EQUIVARIANT if b in offered]
    if not bad:
        return []
    return [
        f"model.dtype: float16 trains with a loss scaler, which would change what loss_balance "
        f"{' and '.join(bad)} optimize; use bfloat16 (on a GPU that has it) or float32, or leave "
        f"{' and '.join(bad)} out of space.loss_balance.choices"
    ]


def distributions(space: Space) -> dict[str, Any]:
    """Optuna's distribution for each parameter of the space."""
    import optuna

    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for name, entry in space.searched.items():
        if isinstance(entry, FloatRange):
            out[name] = optuna.distributions.FloatDistribution(
                entry.low, entry.high, log=entry.log, step=entry.step
            )
        elif isinstance(entry, CategoricalChoice):
            out[name] = optuna.distributions.CategoricalDistribution(entry.choices)
        else:
            out[name] = optuna.distributions.IntDistribution(
                entry.low, entry.high, log=entry.log, step=entry.step
            )
    return out


def _warm_start_problems(cfg: SweepConfig) -> list[str]:
    """Known points (with ``values``) outside the space or missing an objective: found
    before the study is opened, so a bad config writes nothing. A point to run may lie
    outside the space (Optuna runs an enqueued point as given), e.g. today's config."""
    space = cfg.search_space
    names = [o.name for o in cfg.objectives]
    problems = []
    for i, ws in enumerate(cfg.search.warm_start):
        tied = sorted(k for k in ws.params if k in space.tied)
        if tied:
            problems.append(
                f"search.warm_start.{i}.params: {', '.join(tied)} follow(s) "
                f"{', '.join(sorted({space.tied[k] for k in tied}))} (same_as); give that parameter instead"
            )
        if ws.values is None:
            continue
        outside = space.outside(ws.params, fixed=False)
        if outside:
            problems.append(
                f"search.warm_start.{i}.params: {', '.join(outside)} outside the search space "
                "(widen `space` or change the point)"
            )
        missing = [m for m in names if m not in ws.values]
        if missing:
            problems.append(
                f"search.warm_start.{i}.values: missing objective(s) {missing}; give a value for each "
                f"of {names}, or drop `values` to run the point"
            )
    return problems


def check_loggers(cfg: SweepConfig) -> None:
    """A logger the config asks for must be installed (before anything is written)."""
    import importlib.util

    for key, package, label in (("mlflow", "mlflow", "MLflow"), ("wandb", "wandb", "wandb")):
        if getattr(cfg.logging, key) is not None and importlib.util.find_spec(package) is None:
            raise UserInputError(
                f"logging.{key}: {label} is not installed; pip install {package}, or remove the key"
            )


def check_metrics_measurable(cfg: SweepConfig, val_tasks: list[str]) -> None:
    """Every objective and constraint is a metric the trials will produce on this data."""
    wanted = [("objectives", o.name) for o in cfg.objectives]
    wanted += [("constraints", m) for m, _, _ in cfg.constraint_bounds]
    problems = [
        f"{field}: {metric!r} is measured on {task} samples, and data.val has none; "
        f"add {task} samples to data.val, or drop {metric!r}"
        for field, metric in wanted
        if (task := METRICS[metric].task) not in (None, RETAIN) and task not in val_tasks
    ]
    problems += [
        f"{field}: {metric!r} is measured on the retention set, and data.retain is empty; "
        "add samples the base model already answers as data.retain (the demo's: "
        f"builtin:demo/retain), or drop {metric!r}"
        for field, metric in wanted
        if METRICS[metric].task == RETAIN and not cfg.data.retain
    ]
    if problems:
        raise UserInputError(problems)


def sanitized_config(cfg: SweepConfig, base_dir: Path) -> dict[str, Any]:
    """The config as stored on the study: data paths made absolute, no storage URL."""
    raw = cfg.model_dump(mode="json", exclude={"storage"})
    model = Path(raw["model"]["name_or_path"]).expanduser()
    if not raw["model"]["name_or_path"].startswith(BUILTIN) and model.exists():
        # A local checkpoint, as the launching shell saw it: resume may run elsewhere.
        raw["model"]["name_or_path"] = str(model.resolve())
    for split in SPLITS:
        for src in raw["data"][split]:
            p = src["path"]
            if not p.startswith(DEMO_DATA + "/") and not Path(p).expanduser().is_absolute():
                src["path"] = str((base_dir / p).resolve())
    return raw
