"""Fixtures any test may use, and the test tiers.

Which command runs which tests:

- ``pytest``: the fast suite, every test that carries no marker (no services, no GPU).
- ``pytest -m NAME``: one tier, over the whole tree. The tiers are the markers registered
  in pyproject.toml (slow, integration, gpu, browser, fault, cluster, trainers), each with
  what it needs; a test belongs to one tier at most, and an unregistered marker is an
  error (``--strict-markers``).
- ``bash .ci/run``: everything: installs what the tiers need, then runs each of them.

A test named by its node id (``pytest tests/x.py::test_y``) runs whatever its tier.
"""

from __future__ import annotations

import functools
import os
import tomllib
import warnings
from pathlib import Path

import pytest

# Tests never touch the user's cache or a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore", category=FutureWarning)

pytest_plugins = ["pytester"]  # tests/test_tiers.py runs this conftest in projects of its own


def tiers(root: Path) -> list[str]:
    """The tier markers, as pyproject.toml registers them (pytest's own markers aside)."""
    with open(root / "pyproject.toml", "rb") as f:
        lines = tomllib.load(f)["tool"]["pytest"]["ini_options"]["markers"]
    return [line.split(":", 1)[0].strip() for line in lines]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    names = set(tiers(config.rootpath))
    fast, tiered = [], []
    for item in items:
        marked = sorted({m.name for m in item.iter_markers()} & names)
        if len(marked) > 1:
            tiers_of = ", ".join(marked)
            raise pytest.UsageError(f"{item.nodeid} is in {len(marked)} tiers ({tiers_of}): give it one")
        if marked == ["gpu"] and not _cuda():
            why = "gpu tier: no CUDA device here (run `pytest -m gpu` on one)"
            item.add_marker(pytest.mark.skip(reason=why))
        (tiered if marked else fast).append(item)
    if not tiered or config.option.markexpr:
        return
    named = _named(config)
    left = [item for item in tiered if not any(_names(item.nodeid, n) for n in named)]
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = [item for item in items if item not in left]
        config.stash[_LEFT_OUT] = sorted({m for item in left for m in names if item.get_closest_marker(m)})


# The tiers the fast suite left out, for the summary's last line.
_LEFT_OUT = pytest.StashKey[list[str]]()


def _named(config: pytest.Config) -> list[str]:
    """The tests given by node id on the command line, as node ids (relative to the root)."""
    named = []
    for arg in config.args:
        if "::" in arg:
            path, rest = arg.split("::", 1)
            full = (config.invocation_params.dir / path).resolve()
            named.append(f"{full.relative_to(config.rootpath).as_posix()}::{rest}")
    return named


def _names(nodeid: str, named: str) -> bool:
    return nodeid == named or nodeid.startswith((named + "::", named + "["))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    left = config.stash.get(_LEFT_OUT, [])
    if left:
        terminalreporter.write_line(f"fast suite only; the tiers left out run with -m: {', '.join(left)}")


@functools.cache
def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="session", autouse=True)
def ray_token_of_the_tests(tmp_path_factory: pytest.TempPathFactory):
    """The local Rays the tests start keep token auth on, with a token of their own: the
    user's ~/.ray/auth_token is neither made nor changed by a test run."""
    if "RAY_AUTH_TOKEN" not in os.environ and "RAY_AUTH_TOKEN_PATH" not in os.environ:
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(tmp_path_factory.mktemp("ray-token") / "auth_token")


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic OCR + grounding dataset (train.jsonl, val.jsonl, img/)."""
    from vlsweep.demo.synth import write_dataset

    out = tmp_path_factory.mktemp("demo-data")
    write_dataset(out, n_train=24, n_val=8, seed=3)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """Factory: a saved tiny random checkpoint (model, tokenizer, processor) of a family."""
    from tests.support.tiny_models import BUILDERS

    made: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in made:
            import torch

            torch.manual_seed(0)
            model, processor = BUILDERS[family]()
            path = tmp_path_factory.mktemp(f"ckpt-{family}")
            model.save_pretrained(path)
            processor.save_pretrained(path)
            made[family] = path
        return made[family]

    return make


@pytest.fixture(scope="session")
def qwen_ids_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2-VL with Qwen's special-token ids, vocabulary and chat template
    (tests/support/tiny_models.py: build_qwen2_vl_qwen_ids), saved once per session."""
    import torch

    from tests.support.tiny_models import build_qwen2_vl_qwen_ids

    torch.manual_seed(0)
    model, processor = build_qwen2_vl_qwen_ids()
    path = tmp_path_factory.mktemp("ckpt-qwen-ids")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def s3_server():
    """An S3 server on loopback (moto's): the one .ci/s3.sh started (VLSWEEP_TEST_S3_*), or
    one started here. Yields the environment a user of it sets (endpoint and keys)."""
    import os

    from tests.support import s3_server

    given = {
        k[len("VLSWEEP_TEST_S3_") :]: v for k, v in os.environ.items() if k.startswith("VLSWEEP_TEST_S3_AWS_")
    }
    if given:
        yield given
        return
    proc, env = s3_server.start()
    try:
        yield env
    finally:
        proc.kill()
        proc.wait(timeout=30)


@pytest.fixture
def s3(s3_server, monkeypatch):
    """This test as a user of the S3 server: its endpoint and keys in the environment (Ray's
    workers started after this inherit them), and a fresh bucket of its own."""
    import uuid

    import boto3

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    bucket = f"vlsweep-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return {"bucket": bucket, "env": dict(s3_server)}
