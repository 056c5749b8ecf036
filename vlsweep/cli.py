"""The ``vlsweep`` command line: thin wrappers that parse, call the library and map errors.

Exit codes: 0 success, 2 bad input (``error:`` lines naming the field or file:line, no
traceback), 1 anything unexpected. Heavy libraries (torch, transformers) are imported
inside the commands, so ``vlsweep --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from vlsweep.demo import DEMO_TRAIN, DEMO_VAL
from vlsweep.errors import SweepInterrupted, SweepStopped, TrialOutOfMemory, UserInputError

if TYPE_CHECKING:  # heavy imports stay inside the commands (`vlsweep --help` is fast)
    import optuna

    from vlsweep.config import RunConfig, TrainConfig
    from vlsweep.search.config import SweepConfig
    from vlsweep.trials import TrialData

app = typer.Typer(
    name="vlsweep",
    help="Multi-objective hyperparameter search for multi-task LoRA fine-tunes of VLMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Make or check datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
builtin_app = typer.Typer(
    help="The builtin base models: check the shipped weights, rebuild them.", no_args_is_help=True
)
app.add_typer(builtin_app, name="builtin")


def _fail(err: UserInputError) -> NoReturn:
    for line in err.problems:
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(2)


def _stopped(err: SweepStopped) -> NoReturn:
    """A sweep that ended early: its reason once, then the exit code that says why."""
    # An interruption is not an error: its message starts "interrupted (Ctrl-C): ...".
    typer.echo(str(err) if isinstance(err, SweepInterrupted) else f"error: {err}", err=True)
    raise typer.Exit(err.exit_code)


def _echo(msg: str) -> None:
    typer.echo(msg, err=True)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="train config YAML (see examples/demo-train.yaml)")],
    output_dir: Annotated[
        Path | None, typer.Option("-o", "--output-dir", help="where metrics.json and the adapter go")
    ] = None,
    eval_base: Annotated[
        bool, typer.Option("--eval-base", help="first score the untouched base model")
    ] = False,
    steps: Annotated[int | None, typer.Option(help="override budget.steps")] = None,
) -> None:
    """One fine-tune with fixed hyperparameters; writes metrics.json and the adapter."""
    try:
        from vlsweep.config import load_train_config

        cfg, base_dir = load_train_config(config)
        if steps is not None:
            if steps < 1:
                raise UserInputError(f"--steps must be >= 1, got {steps}")
            cfg.budget.steps = steps
        out = output_dir or Path(cfg.output_dir or f"runs/{cfg.name}")
        if not out.is_absolute() and output_dir is None and cfg.output_dir:
            out = base_dir / out
        _echo(f"vlsweep train: {config} -> {out}")
        from vlsweep import demo
        from vlsweep.trials import load_data, run_trial

        cfg = demo.resolve(cfg)
        data = load_data(cfg.data, base_dir)
        result = run_trial(
            cfg.params, cfg.budget, cfg=cfg, data=data, output_dir=out, eval_base=eval_base, log=_echo
        )
    except UserInputError as err:
        _fail(err)
    except TrialOutOfMemory as err:  # its message says where and what to change
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    summary: dict[str, Any] = {k: result[k] for k in ("cer", "iou", "parse_fail_rate") if k in result}
    if "base" in result:
        summary["base"] = {k: result["base"].get(k) for k in ("cer", "iou")}
    summary["train_seconds"] = round(result["train_seconds"], 2)
    _echo(f"wrote {out / 'metrics.json'} and {out / 'adapter'}")
    typer.echo(json.dumps(summary))


@app.command()
def validate(config: Annotated[Path, typer.Argument(help="config YAML to check")]) -> None:
    """Report every problem in a config (train or sweep) and its data, without running anything."""
    try:
        from vlsweep.config import load_train_config, read_yaml
        from vlsweep.search.config import SWEEP_KEYS, load_sweep_config

        raw = read_yaml(config)
        kind = "sweep" if SWEEP_KEYS & set(raw) else "train"
        if kind == "sweep":
            sweep, base_dir = load_sweep_config(config, raw)
            data = _preflight(sweep, base_dir)
        else:
            cfg, base_dir = load_train_config(config)
            data = _check_run(cfg, base_dir)
    except UserInputError as err:
        _fail(err)
    typer.echo(
        f"ok: {config} ({kind} config): {len(data.train)} train and {len(data.val)} val samples, "
        f"tasks {data.tasks}"
    )


StorageOpt = Annotated[
    str | None,
    typer.Option("--storage", help="SQLAlchemy URL (else $VLSWEEP_STORAGE, else sqlite:///vlsweep.db)"),
]
AddressOpt = Annotated[
    str | None, typer.Option("--address", help="Ray cluster address (default, or local: start a local Ray)")
]


def _default_sweep_config() -> Path:
    from importlib.resources import files

    return Path(str(files("vlsweep") / "configs" / "demo-sweep.yaml"))


def _preflight(cfg: SweepConfig, base_dir: Path) -> TrialData:
    """Every problem with a sweep's data, model and objectives, before a study is opened
    or Ray started: a bad sweep config writes nothing. Returns the loaded data."""
    from vlsweep.search.config import check_loggers, check_metrics_measurable
    from vlsweep.search.fit import check_fit

    data = _check_run(cfg, base_dir)
    check_metrics_measurable(cfg, sorted({r.task for r in data.val}))
    check_loggers(cfg)
    check_fit(cfg, data, _echo)
    return data


def _check_run(cfg: RunConfig, base_dir: Path) -> TrialData:
    """Load the data and check the model without loading weights (a builtin model's
    shipped files against their checksums). Returns the data."""
    from vlsweep import demo
    from vlsweep.trials import check_model, load_data

    resolved = demo.resolve(cfg)
    data = load_data(resolved.data, base_dir)
    check_model(resolved.model)
    return data


def _run_sweep(
    cfg: SweepConfig, base_dir: Path, url: str, address: str | None, *, resume: bool
) -> optuna.Study:
    """Run the sweep here, or with ``ray://`` its driver on the cluster's head (Ray Client)."""
    from vlsweep.search.sweep import run_sweep, run_sweep_via_client
    from vlsweep.storages import load_existing

    address = address or cfg.ray.address
    if address and address.startswith("ray://"):
        run_sweep_via_client(cfg, base_dir, url, address, log=_echo, resume=resume)
        return load_existing(url, cfg.name)
    return run_sweep(cfg, base_dir, url, address=address, resume=resume, log=_echo)


def _print_front(study: optuna.Study) -> None:
    from vlsweep.results import SweepResults
    from vlsweep.status import front_table

    typer.echo(front_table(SweepResults.of(study)))


@app.command()
def launch(
    config: Annotated[
        Path | None,
        typer.Argument(help="sweep config YAML; none = the embedded demo (examples/demo-sweep.yaml)"),
    ] = None,
    storage: StorageOpt = None,
    address: AddressOpt = None,
    from_study: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="carry this study of a smaller model of the family: its front first, its trials "
            "as the sampler's prior knowledge (sets search.transfer_from)",
        ),
    ] = None,
    from_storage: Annotated[
        str | None, typer.Option("--from-storage", help="where the --from study lives (default: --storage)")
    ] = None,
    rescale: Annotated[
        str | None,
        typer.Option("--rescale", help="learning-rate rule for what is carried: none or hidden"),
    ] = None,
) -> None:
    """Run a sweep: Ray Tune runs the trials, Optuna proposes them (Pareto front of CER and IoU)."""
    try:
        from vlsweep.search.config import load_sweep_config
        from vlsweep.storages import storage_url

        path = config or _default_sweep_config()
        cfg, base_dir = load_sweep_config(path)
        if from_study is not None or from_storage is not None or rescale is not None:
            cfg = _with_transfer(cfg, path, from_study, from_storage, rescale)
        _preflight(cfg, base_dir)
        url = storage_url(storage, cfg.storage)
        _echo(f"vlsweep launch: {path if config else 'embedded demo (examples/demo-sweep.yaml)'}")
        study = _run_sweep(cfg, base_dir, url, address, resume=False)
    except UserInputError as err:
        _fail(err)
    except SweepStopped as err:
        _stopped(err)
    _print_front(study)


def _with_transfer(
    cfg: SweepConfig, path: Path, study: str | None, storage: str | None, rescale: str | None
) -> SweepConfig:
    """The config with ``search.transfer_from`` set from --from, --from-storage, --rescale
    (validated as if the file said it, so ``vlsweep resume`` keeps it)."""
    from vlsweep.search.config import load_sweep_config

    given = cfg.search.transfer_from.model_dump() if cfg.search.transfer_from else {}
    if study is None and not given:
        raise UserInputError("--from-storage/--rescale: name the study to carry with --from STUDY")
    spec = {**given, **{k: v for k, v in (("study", study), ("storage", storage), ("rescale", rescale)) if v}}
    raw = cfg.model_dump(mode="json", exclude_unset=True)
    raw.setdefault("search", {})["transfer_from"] = spec
    return load_sweep_config(path, data=raw)[0]


@app.command()
def resume(
    name: Annotated[str, typer.Argument(help="study name of the interrupted sweep")],
    storage: StorageOpt = None,
    address: AddressOpt = None,
) -> None:
    """Continue an interrupted sweep to its trial budget (lost trials re-run with their parameters)."""
    try:
        from vlsweep.search.config import SweepConfig
        from vlsweep.storages import load_existing, storage_url

        url = storage_url(storage)
        study = load_existing(url, name)
        raw = study.user_attrs.get("config")
        if not raw:
            raise UserInputError(
                f"study {name!r} was not made by vlsweep launch (no config attr); cannot resume"
            )
        cfg = SweepConfig.model_validate(raw)
        study = _run_sweep(cfg, Path.cwd(), url, address, resume=True)
    except UserInputError as err:
        _fail(err)
    except SweepStopped as err:
        _stopped(err)
    _print_front(study)


@app.command()
def status(
    name: Annotated[str | None, typer.Argument(help="study name; none = list the studies")] = None,
    storage: StorageOpt = None,
) -> None:
    """Trial counts by state and the current Pareto front as a table."""
    try:
        from vlsweep.status import status_text

        typer.echo(status_text(name, storage))
    except UserInputError as err:
        _fail(err)


def _is_loopback(host: str) -> bool:
    import ipaddress
    import socket

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


@app.command()
def dashboard(
    storage: StorageOpt = None,
    host: Annotated[
        str, typer.Option(help="address to listen on (loopback unless you say otherwise)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8080,
    artifacts: Annotated[
        str | None,
        typer.Option(help="artifact store of the trials' files (default: the one the sweeps recorded)"),
    ] = None,
) -> None:
    """Browse the sweep's studies in optuna-dashboard (Pareto front, history, importances,
    each trial's files)."""
    try:
        from vlsweep.storages import masked, open_storage, storage_url

        url = storage_url(storage)
        # The password stays in this process, never on a command line. No cache: the
        # dashboard outlives the sweeps it shows (open_storage).
        store = open_storage(url, cached=False)
        artifact_store = _dashboard_artifacts(store, artifacts)
        import optuna_dashboard
    except UserInputError as err:
        _fail(err)
    if not _is_loopback(host):
        _echo(
            f"warning: listening on {host}: optuna-dashboard has no authentication and anyone who can "
            "reach this port can read, annotate and delete studies; prefer an SSH tunnel to 127.0.0.1"
        )
    _echo(f"optuna-dashboard on {masked(url)}: http://{host}:{port}/ (Ctrl-C stops it)")
    optuna_dashboard.run_server(store, host=host, port=port, artifact_store=artifact_store)


def _dashboard_artifacts(storage: Any, given: str | None) -> Any:
    """The artifact store the dashboard serves: ``--artifacts``, else the one the studies
    recorded (optuna-dashboard serves one store for all studies)."""
    import optuna

    from vlsweep import artifacts as arts

    if given:
        return arts.open_store(given, key="--artifacts", check=True)
    urls = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        url = summary.user_attrs.get(arts.STORE_ATTR)
        if url and url != arts.NONE and url not in urls:
            urls.append(url)
    if not urls:
        return None
    if len(urls) > 1:
        _echo(
            f"warning: the studies store their files in {len(urls)} places; serving {urls[0]} "
            "(pass --artifacts for another)"
        )
    _echo(f"trial files (artifacts) from {urls[0]}")
    return arts.open_store(urls[0], check=True)


@app.command("eval")
def eval_(
    model: Annotated[
        str | None,
        typer.Option(help="base model: Hub id, checkpoint directory (a merged export too), builtin:NAME"),
    ] = None,
    adapter: Annotated[Path | None, typer.Option(help="peft adapter directory to put on the model")] = None,
    data: Annotated[
        list[Path] | None,
        typer.Option(help="validation data, vlsweep JSONL (repeatable; default: the config's)"),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="train config: prompts, eval budget, model settings (e.g. an export's train.yaml)"),
    ] = None,
    output_dir: Annotated[
        Path | None, typer.Option("-o", "--output-dir", help="write metrics.json and predictions.jsonl")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the metrics as JSON, not a table")] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: the config's)")] = None,
) -> None:
    """Score a model (and adapter) with the sweep's metrics: CER, IoU, acc@0.5, parse
    failures and per-task loss, as a trial's evaluation computes them. Use it on whatever
    your trainer produced from an export."""
    try:
        cfg, base_dir = _eval_config(model, data, config, device)
        from vlsweep import demo
        from vlsweep.trials import load_data, score

        cfg = demo.resolve(cfg)
        val = load_data(cfg.data, base_dir, ("val",)).val
        what = cfg.model.name_or_path + (f" + {adapter}" if adapter else "")
        _echo(f"vlsweep eval: {what} on {len(val)} samples")
        metrics, predictions = score(cfg, val, adapter=adapter, log=_echo)
    except UserInputError as err:
        _fail(err)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (output_dir / "predictions.jsonl").write_text(predictions)
        _echo(f"wrote {output_dir / 'metrics.json'} and {output_dir / 'predictions.jsonl'}")
    if as_json:
        typer.echo(json.dumps(metrics))
        return
    from vlsweep.metrics import METRICS

    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        label = METRICS[key].label if key in METRICS else ""
        typer.echo(f"{key:<{width}}  {value:<10.6g}  {label}".rstrip())


def _eval_config(
    model: str | None, data: list[Path] | None, config: Path | None, device: str | None
) -> tuple[TrainConfig, Path]:
    """The config ``vlsweep eval`` scores with: ``--config`` (a train config) or the
    defaults, with ``--model``, ``--data`` and ``--device`` over it."""
    from vlsweep.config import TrainConfig, load_train_config

    if config is not None:
        cfg, base_dir = load_train_config(config)
    else:
        problems = [] if model else ["--model: give the model to score (or --config with model.name_or_path)"]
        problems += [] if data else ["--data: give the validation data to score on (vlsweep JSONL)"]
        if problems:
            raise UserInputError(problems)
        cfg, base_dir = TrainConfig.model_validate({"data": {"train": [], "val": []}}), Path.cwd()
    update: dict[str, Any] = {}
    if model:
        cfg.model = cfg.model.model_copy(update={"name_or_path": model})
    if device:
        update["device"] = device
        cfg.model = cfg.model.model_copy(update=update)
    if data:
        cfg.data = cfg.data.model_validate(
            {**cfg.data.model_dump(), "val": [{"path": str(p.resolve())} for p in data]}
        )
    return cfg, base_dir


PickOpt = Annotated[
    str, typer.Option("--pick", help="knee (balanced, see docs/report.md), best:METRIC or trial:N")
]
WhereOpt = Annotated[
    list[str] | None, typer.Option("--where", help="filter first, e.g. 'cer<=0.05' (repeatable)")
]


def _results_and_pick(name: str, storage: str | None, how: str, where: list[str] | None, *, optional: bool):  # noqa: ANN202
    """The study's results and the picked trial (None when ``optional`` and nothing is COMPLETE)."""
    from vlsweep.metrics import METRICS
    from vlsweep.results import SweepResults, parse_where, pick
    from vlsweep.storages import load_existing, storage_url

    results = SweepResults.of(load_existing(storage_url(storage), name))
    known = list(dict.fromkeys([*results.metric_names, *METRICS]))
    conds = parse_where(where or [], known)
    if optional and not results.complete:
        return results, None
    return results, pick(results, how, conds)


@app.command()
def report(
    name: Annotated[str, typer.Argument(help="study name")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="HTML file (default NAME-report.html)")
    ] = None,
    png: Annotated[bool, typer.Option("--png", help="also write each plot as PNG (needs Chromium)")] = False,
    pick: PickOpt = "knee",
    where: WhereOpt = None,
    storage: StorageOpt = None,
) -> None:
    """One self-contained HTML report: Pareto front, hypervolume, importances, learning rates."""
    try:
        from vlsweep.report import write_report

        results, trial = _results_and_pick(name, storage, pick, where, optional=True)
        out = output or Path(f"{name}-report.html")
        paths = write_report(results, out, trial.number if trial else None, png=png)
    except UserInputError as err:
        _fail(err)
    for path in paths:
        typer.echo(f"wrote {path}")


def export_formats_help() -> str:
    from vlsweep.export import help_text

    return help_text()


@app.command()
def export(
    name: Annotated[str, typer.Argument(help="study name")],
    format: Annotated[str, typer.Option("--format", help=export_formats_help())] = "vlsweep",
    pick: PickOpt = "knee",
    where: WhereOpt = None,
    output_dir: Annotated[
        Path | None, typer.Option("-o", "--output-dir", help="default export-NAME-trial-N")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="training steps of the exported run (default: the sweep's)")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="export what the tool would train differently, as notes")
    ] = False,
    adapter: Annotated[
        Path | None, typer.Option(help="merged: merge this adapter directory instead of the stored one")
    ] = None,
    artifacts: Annotated[
        str | None, typer.Option(help="adapter, merged: the trials' file store, if not the one recorded")
    ] = None,
    storage: StorageOpt = None,
) -> None:
    """Export the picked trial for vlsweep train, LLaMA-Factory, ms-swift or peft, or the
    adapter it trained (adapter), or the base with it merged in (merged)."""
    try:
        from vlsweep.export import export as run_export

        results, trial = _results_and_pick(name, storage, pick, where, optional=False)
        assert trial is not None
        out = output_dir or Path(f"export-{name}-trial-{trial.number}")
        paths = run_export(
            results, trial, format, out, steps, force=force, adapter=adapter, artifacts=artifacts
        )
    except UserInputError as err:
        _fail(err)
    values = " ".join(f"{n}={v:.4g}" for n, v in zip(results.metric_names, trial.values, strict=True))
    typer.echo(f"trial {trial.number} ({values}), picked by {pick}")
    for path in paths:
        typer.echo(f"wrote {path}")


@data_app.command("demo")
def data_demo(
    out: Annotated[Path, typer.Argument(help="directory to write train.jsonl, val.jsonl, img/")],
    seed: Annotated[int, typer.Option(help="random seed (same seed, same files)")] = 0,
    n_train: Annotated[int, typer.Option("--n-train", min=2)] = DEMO_TRAIN,
    n_val: Annotated[int, typer.Option("--n-val", min=2)] = DEMO_VAL,
    style: Annotated[str, typer.Option(help="rendering style of the tables: demo or pretrain")] = "demo",
) -> None:
    """Write the demo's synthetic dataset: table-cell grounding and plain-print OCR, exact
    boxes (docs/demo.md)."""
    from vlsweep.demo import STYLES, write_dataset

    if style not in STYLES:
        _fail(UserInputError(f"--style must be one of {sorted(STYLES)}, got {style!r}"))
    paths = write_dataset(out, n_train=n_train, n_val=n_val, seed=seed, style=style)
    typer.echo(f"wrote {paths['train']} ({n_train} records) and {paths['val']} ({n_val} records)")


@data_app.command("check")
def data_check(
    paths: Annotated[list[Path], typer.Argument(help="dataset file(s) to check")],
    format: Annotated[str, typer.Option(help="vlsweep or sharegpt")] = "vlsweep",
    task: Annotated[str | None, typer.Option(help="task of a sharegpt file: ocr or grounding")] = None,
    box_format: Annotated[str, typer.Option(help="box format of sharegpt grounding answers")] = "pixels",
) -> None:
    """Check dataset files; every problem is reported as file:line."""
    from vlsweep.config import DataSource
    from vlsweep.trials import load_records

    try:
        DataSource(path="-", format=format, task=task, box_format=box_format)  # type: ignore[arg-type]
    except Exception as exc:  # pydantic's message already names the option
        _fail(UserInputError(f"options: {str(exc).splitlines()[-1].strip()}"))
    problems: list[str] = []
    counts: list[str] = []
    for path in paths:
        records, errs = load_records(path, format=format, task=task, box_format=box_format)
        problems += errs
        by_task: dict[str, int] = {}
        for r in records:
            by_task[r.task] = by_task.get(r.task, 0) + 1
        counts.append(f"{path}: {len(records)} valid records {by_task}")
    if problems:
        _fail(UserInputError(problems))
    for line in counts:
        typer.echo(f"ok: {line}")


@builtin_app.command("verify")
def builtin_verify(
    names: Annotated[list[str] | None, typer.Argument(help="builtin models (default: all)")] = None,
    run_probe: Annotated[
        bool, typer.Option("--probe", help="also probe each base against its recipe's thresholds")
    ] = False,
) -> None:
    """Check the shipped weights against their SHA256SUMS (and, with --probe, that each base
    still reads and grounds as its recipe requires). Every model is checked, then the
    problems are reported together."""
    from vlsweep.demo import RECIPES, builtin_path, check_name, probe, verify

    try:
        for name in names or []:
            check_name(name, "NAME")
    except UserInputError as err:
        _fail(err)
    problems: list[str] = []
    below = False
    for name in names or sorted(RECIPES):
        path = builtin_path(name)
        damaged = verify(path)
        if damaged:
            problems += [f"builtin:{name}: {p}" for p in damaged]
            continue
        line = f"builtin:{name}: {path}: checksums ok"
        if run_probe:
            figures, recipe = probe(path), RECIPES[name]
            ok = recipe.meets(figures)
            below |= not ok
            verdict = "ok" if ok else "BELOW THE RECIPE"
            line += (
                f"; probe cer={figures['cer']:.4f} (<= {recipe.probe_max_cer:g}) "
                f"iou={figures['iou']:.4f} (>= {recipe.probe_min_iou:g}): {verdict}"
            )
        typer.echo(line)
    if problems:
        _fail(
            UserInputError(
                problems
                + [
                    "the shipped weights are damaged or incomplete: reinstall vlsweep, or rebuild a "
                    "model from its recipe (`vlsweep builtin rebuild NAME -o DIR`) and set "
                    "model.name_or_path to DIR"
                ]
            )
        )
    if below:
        raise typer.Exit(1)


@builtin_app.command("rebuild")
def builtin_rebuild(
    name: Annotated[str, typer.Argument(help="the builtin model, e.g. tiny-qwen2-vl")],
    out: Annotated[
        Path | None, typer.Option("-o", "--output-dir", help="a new directory (default: ./builtin-NAME)")
    ] = None,
) -> None:
    """Build a builtin base from its recipe (vlsweep/demo/builtin.py), as the shipped one was:
    minutes on 2 CPU cores. Use the result with `model.name_or_path: DIR`."""
    from vlsweep.demo import rebuild

    out = out or Path(f"builtin-{name}")
    try:
        info = rebuild(name, out, log=_echo)
    except UserInputError as err:
        _fail(err)
    figures = info["probe"]
    verdict = "meets" if figures["meets_recipe"] else "is BELOW"
    same = "identical to" if info["identical_to_shipped"] else "differ from"
    typer.echo(
        f"built builtin:{name} in {info['seconds']:.0f} s into {out}; probe cer={figures['cer']:.4f} "
        f"iou={figures['iou']:.4f}: {verdict} the recipe's thresholds; weights {same} the shipped ones"
    )
    if not figures["meets_recipe"]:
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except UserInputError as err:  # raised outside a command's own handler
        for line in err.problems:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
