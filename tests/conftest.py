from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

# Tests never touch the user's cache or a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic OCR + grounding dataset (train.jsonl, val.jsonl, img/)."""
    from vlsweep.trials.synth import write_dataset

    out = tmp_path_factory.mktemp("demo-data")
    write_dataset(out, n_train=24, n_val=8, seed=3)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """Factory: a saved tiny random checkpoint (model, tokenizer, processor) of a family."""
    from vlsweep.trials.tiny import BUILDERS

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


def train_config(model: Path | str, data: Path, **overrides) -> dict:
    """A train config dict on the given checkpoint and dataset directory."""
    cfg = {
        "model": {"name_or_path": str(model)},
        "data": {"train": str(data / "train.jsonl"), "val": str(data / "val.jsonl")},
        "budget": {"steps": 2, "batch_size": 4, "max_new_tokens": 8},
        "seed": 0,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def wait_for_http(url: str, proc, seconds: float = 30.0) -> bytes:
    """The body at ``url`` once the server process ``proc`` answers; fails if it dies first."""
    import time
    import urllib.request

    deadline = time.time() + seconds
    while True:
        try:
            return urllib.request.urlopen(url, timeout=2).read()
        except OSError:
            assert time.time() < deadline and proc.poll() is None, f"nothing answered at {url}"
            time.sleep(0.3)
