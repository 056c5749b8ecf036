"""Every finished trial's files as Optuna artifacts: the adapter, ``metrics.json``,
``predictions.jsonl`` and ``train_log.jsonl``, so optuna-dashboard's artifact panel offers
them and ``vlsweep export --format adapter|merged`` hands out what a trial trained without
training it again.

The store is Optuna's own (``FileSystemArtifactStore`` for a directory,
``Boto3ArtifactStore`` for ``s3://BUCKET``), named once by the sweep config's
``artifacts.store`` and recorded on the study (user attr ``artifact_store``), so every
reader finds it from the study alone.

Each worker writes its trial's files into the store itself (on a cluster, the driver cannot
read a worker's disk) and reports their metadata; the driver links them to the Optuna trial.
Optuna's public ``upload_artifact`` does both in one process and needs the study database,
which workers never open; so the link is written here in Optuna's own form (a trial system
attr ``artifacts:<id>`` holding the ``ArtifactMeta`` as JSON), which ``get_all_artifact_meta``
and optuna-dashboard read. Retention removes files from the
store; a finished trial's attrs cannot change, so the removal is recorded on the study
and ``trial_files`` leaves those out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import mimetypes
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import ArtifactMeta
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState

from vlsweep import pareto
from vlsweep.errors import UserInputError

# The files of a trial directory that are stored, as (path in the trial directory, file name
# in the store). The adapter's two files keep peft's names, so a download is a peft adapter.
TRIAL_FILES = (
    ("adapter/adapter_config.json", "adapter_config.json"),
    ("adapter/adapter_model.safetensors", "adapter_model.safetensors"),
    ("metrics.json", "metrics.json"),
    ("predictions.jsonl", "predictions.jsonl"),
    ("train_log.jsonl", "train_log.jsonl"),
)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
STORE_ATTR = "artifact_store"  # study user attr: the store's URL (a path or s3://BUCKET)
RESULT_KEY = "vlsweep_artifacts"  # the worker's final result: the stored files' metadata (JSON)
ERROR_KEY = "vlsweep_artifacts_error"
# Optuna's attr prefix for an artifact linked to a trial (optuna.artifacts._upload).
_ATTR_PREFIX = "artifacts:"
_REMOVED_PREFIX = "vlsweep:artifacts_removed:"  # study system attr per trial number: removed ids
NONE = "none"


def default_store(storage_url: str, out_root: Path) -> str:
    """Beside an SQLite study file (``vlsweep.db`` -> ``vlsweep-artifacts/``); for any other
    database, under the sweep's output directory."""
    from sqlalchemy.engine import make_url

    url = make_url(storage_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        db = Path(url.database).expanduser().resolve()
        return str(db.with_name(f"{db.stem}-artifacts"))
    return str(out_root / "artifacts")


def is_local(url: str) -> bool:
    return "://" not in url


def url_problem(url: str) -> str | None:
    """Why ``url`` names no store Optuna can open, or None."""
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket or prefix.strip("/"):
            return (
                f"{url!r}: give a bucket alone, s3://BUCKET (Optuna's Boto3ArtifactStore keys "
                "each artifact by its id at the bucket's top level)"
            )
        return None
    if "://" in url:
        return (
            f"{url!r}: give a directory (shared by every node on a cluster) or s3://BUCKET, "
            f"or {NONE!r} to store nothing"
        )
    return None


def open_store(url: str, create: bool = True, key: str = "artifacts.store", check: bool = False) -> Any:
    """Optuna's artifact store for ``url``: a directory (made when ``create``), or
    ``s3://BUCKET`` (with ``check``, its bucket and credentials are tried first:
    ``object_storage.check_bucket``). ``key`` names where the URL came from, for errors."""
    problem = url_problem(url)
    if problem:
        raise UserInputError(f"{key}: {problem}")
    if url.startswith("s3://"):
        try:
            import boto3
        except ImportError:
            raise UserInputError(
                f"{key}: {url!r} needs boto3 (pip install 'vlsweep[s3]'); credentials come "
                "from boto3's usual places (AWS_* variables, ~/.aws, an instance role)"
            ) from None
        bucket = url[len("s3://") :].strip("/")
        if check:
            from vlsweep import object_storage

            object_storage.check_bucket(bucket, key)
        return optuna.artifacts.Boto3ArtifactStore(bucket, client=boto3.client("s3"))
    path = Path(url).expanduser()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    elif not path.is_dir():
        raise UserInputError(
            f"artifacts.store: {url} does not exist on this machine: the sweep's workers stored "
            "the trials' files there; run this where that directory is (or mount it), or pass "
            "--artifacts with where it is now"
        )
    return optuna.artifacts.FileSystemArtifactStore(str(path))


def store_of(study: optuna.Study) -> Any | None:
    """The artifact store a sweep recorded on its study, or None (artifacts off, or a study
    from before they were stored)."""
    url = study.user_attrs.get(STORE_ATTR)
    return open_store(url, create=False, check=True) if url and url != NONE else None


def file_id(key: str, name: str) -> str:
    """A stored file's id: a UUID derived from what names the trial's run (``key``) and
    the file name, so that the same trial run again writes the same ids (over what an
    interrupted run stored) and the driver can remove what a failed trial left unlinked."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"vlsweep:{key}/{name}"))


def write_trial_files(store: Any, trial_dir: Path, key: str | None = None) -> list[dict[str, Any]]:
    """Write a finished trial's files into the store (worker side); returns their metadata.
    ``key`` names the trial's run (``file_id``); without it each file gets a random id."""
    metas = []
    for rel, name in TRIAL_FILES:
        path = trial_dir / rel
        if not path.is_file():
            continue
        mimetype, encoding = mimetypes.guess_type(name)
        meta = ArtifactMeta(
            artifact_id=file_id(key, name) if key else str(uuid.uuid4()),
            filename=name,
            mimetype=mimetype
            or ("application/x-ndjson" if name.endswith(".jsonl") else "application/octet-stream"),
            encoding=encoding,
        )
        with path.open("rb") as f:
            store.write(meta.artifact_id, f)
        metas.append(dataclasses.asdict(meta))
    return metas


def remove_unlinked(store: Any, key: str) -> None:
    """Remove the files a trial's run named ``key`` may have begun to store and never
    reported (its worker or node died while writing them)."""
    for _, name in TRIAL_FILES:
        with contextlib.suppress(ArtifactNotFound):
            store.remove(file_id(key, name))


def link(storage: Any, trial_id: int, metas: Sequence[dict[str, Any]]) -> None:
    """Link stored files to an Optuna trial (driver side), as ``upload_artifact`` does."""
    for meta in metas:
        storage.set_trial_system_attr(trial_id, _ATTR_PREFIX + meta["artifact_id"], json.dumps(meta))


def any_linked(trials: Sequence[FrozenTrial]) -> bool:
    """Whether any of ``trials`` has stored files linked to it (removed ones included)."""
    return any(key.startswith(_ATTR_PREFIX) for t in trials for key in t.system_attrs)


def removed_ids(study: optuna.Study) -> set[str]:
    """Ids of the stored files retention removed (recorded on the study: a finished
    trial's own attrs can no longer change)."""
    ids: set[str] = set()
    for key, value in study._storage.get_study_system_attrs(study._study_id).items():
        if key.startswith(_REMOVED_PREFIX):
            ids.update(value)
    return ids


def trial_files(
    trial: FrozenTrial, removed: set[str] | frozenset[str] = frozenset()
) -> dict[str, ArtifactMeta]:
    """The trial's stored files by file name, leaving out those in ``removed``."""
    out = {}
    for key, value in trial.system_attrs.items():
        if key.startswith(_ATTR_PREFIX):
            meta = json.loads(value) if isinstance(value, str) else value
            if meta and meta["artifact_id"] not in removed:
                out[meta["filename"]] = ArtifactMeta(**meta)
    return out


def remove(study: optuna.Study, store: Any, trial: FrozenTrial, removed: set[str]) -> int:
    """Remove a trial's stored files from the store; returns how many.

    Optuna refuses to change a finished trial, so its links stay (optuna-dashboard still
    lists the files, and a download of one answers "not found"); the removal is recorded
    on the study, and every vlsweep reader leaves those files out."""
    files = trial_files(trial, removed)
    for meta in files.values():
        with contextlib.suppress(ArtifactNotFound):  # already gone from the store
            store.remove(meta.artifact_id)
    if files:
        ids = sorted({m.artifact_id for m in files.values()})
        study._storage.set_study_system_attr(study._study_id, f"{_REMOVED_PREFIX}{trial.number}", ids)
        removed.update(ids)
    return len(files)


def kept(trials: Sequence[FrozenTrial], directions: Sequence[str], keep_last: int | None) -> set[int]:
    """Numbers of the trials whose files retention keeps: the Pareto front's, and the
    ``keep_last`` most recently finished (None keeps every trial's)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    if keep_last is None:
        return {t.number for t in done}
    on_front = {done[i].number for i in pareto.front([t.values for t in done], directions)}
    recent = sorted(done, key=lambda t: (t.datetime_complete or t.datetime_start, t.number))
    return on_front | ({t.number for t in recent[-keep_last:]} if keep_last > 0 else set())


def prune(study: optuna.Study, store: Any, keep_last: int | None) -> int:
    """Apply retention: remove the files of every trial ``kept`` leaves out; returns how many."""
    if keep_last is None:
        return 0
    trials = study.get_trials(deepcopy=False)
    keep = kept(trials, [d.name.lower() for d in study.directions], keep_last)
    removed = removed_ids(study)
    return sum(remove(study, store, t, removed) for t in trials if t.number not in keep)


def download(
    study: optuna.Study, store: Any, trial: FrozenTrial, names: Sequence[str], out: Path
) -> list[Path]:
    """Copy the named files of a trial out of the store into ``out``; a name the trial does
    not have is an error saying why it may be missing."""
    files = trial_files(trial, removed_ids(study))
    missing = [n for n in names if n not in files]
    if missing:
        have = ", ".join(sorted(files)) or "none"
        raise UserInputError(
            f"trial {trial.number} has no stored {', '.join(missing)} (stored: {have}): its files "
            "were removed by retention (artifacts.keep_last keeps the front's and the last N), or "
            "the sweep stored none (artifacts.store: none, or a study older than artifact storage); export "
            "--format vlsweep and run `vlsweep train` on it to make them again"
        )
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = out / name
        try:
            reader = store.open_reader(files[name].artifact_id)
        except ArtifactNotFound:
            raise UserInputError(
                f"trial {trial.number}'s {name} is linked but not in the store "
                f"{study.user_attrs.get(STORE_ATTR)} "
                "(removed by hand, or moved): pass --artifacts with where the store is now"
            ) from None
        with reader as src, path.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        paths.append(path)
    return paths
