"""The builtin model's build: once per machine, never twice at a time, nothing half-written.

Each test builds a tiny recipe (a few seconds) in a fresh ``$VLSWEEP_CACHE``, in real
subprocesses, with the moment that matters (a second process arriving, a SIGKILL) set by
the test rather than by timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vlsweep.demo.builtin import BuildProgress
from vlsweep.errors import UserInputError

# Registers a tiny recipe (1-layer model, a handful of steps) and runs ensure_builtin on it.
# HOOK runs inside the build: "hold" waits for a file before building, "kill" SIGKILLs the
# process at the first training step.
SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from vlsweep.demo import builtin

    builtin.RECIPES["test-tiny"] = builtin.Recipe(
        "qwen2_vl", {"hidden": 32, "layers": 1, "vision_layers": 1, "heads": 2},
        pretrain_steps=4, n_samples=8, one_word_samples=4, vision_samples=8, vision_steps=2,
        vision_batch_size=4, batch_size=4, minutes=0.1,
    )
    hook, gate = sys.argv[1], Path(sys.argv[2])
    real_build = builtin.build

    def build(name, out, **kw):
        print("BUILD STARTED", flush=True)
        if hook == "hold":
            while not gate.exists():
                time.sleep(0.05)
        return real_build(name, out, **kw)

    def update(self, n=1, **stats):
        os.kill(os.getpid(), signal.SIGKILL)

    builtin.build = build
    if hook == "kill":
        builtin.BuildProgress.update = update
    path = builtin.ensure_builtin("test-tiny", log=lambda m: print(m, flush=True))
    print("PATH", path, flush=True)
    """
)


def _start(tmp_path: Path, hook: str) -> subprocess.Popen:
    env = {**os.environ, "VLSWEEP_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, hook, str(tmp_path / "gate")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _read_until(proc: subprocess.Popen, needle: str, seconds: float = 120) -> list[str]:
    lines = []
    deadline = time.time() + seconds
    assert proc.stdout is not None
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} never came: {lines}")


def _models(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "cache" / "models").iterdir())


@pytest.mark.slow
def test_a_second_process_waits_for_the_build_instead_of_building_again(tmp_path):
    first = _start(tmp_path, "hold")
    out_first = _read_until(first, "BUILD STARTED")
    assert any("building builtin:test-tiny, first run only" in x for x in out_first), out_first
    second = _start(tmp_path, "hold")
    out_second = _read_until(second, "is building it")
    assert f"pid {first.pid} on " in out_second[-1], out_second
    (tmp_path / "gate").touch()  # now let the first build run
    out_first += first.communicate(timeout=300)[0].splitlines()
    out_second += second.communicate(timeout=300)[0].splitlines()
    assert first.returncode == 0 and second.returncode == 0, out_first + out_second
    assert not any("BUILD STARTED" in x for x in out_second), out_second
    paths = {x for x in out_first + out_second if x.startswith("PATH ")}
    assert len(paths) == 1, paths
    assert (Path(paths.pop().removeprefix("PATH ")) / "config.json").is_file()


@pytest.mark.slow
def test_a_killed_build_leaves_nothing_loadable_and_the_next_build_cleans_up(tmp_path):
    killed = _start(tmp_path, "kill")
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    left = _models(tmp_path)
    assert left and all(name.startswith(".") for name in left), left  # only hidden leftovers
    assert any(".tmp-" in name for name in left), left
    done = _start(tmp_path, "go")
    out = done.communicate(timeout=300)[0]
    assert done.returncode == 0, out
    (path_line,) = [x for x in out.splitlines() if x.startswith("PATH ")]
    path = Path(path_line.removeprefix("PATH "))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert [n for n in _models(tmp_path) if ".tmp-" in n] == []  # the killed build's leftovers are gone


def test_build_progress_in_a_log_is_a_line_every_tenth_with_an_estimate():
    lines: list[str] = []

    class NotATerminal:
        def isatty(self) -> bool:
            return False

    with BuildProgress("building builtin:x", lines.append, stream=NotATerminal()) as progress:
        progress.start(30, "stage 1 of 2 (vision tower)")
        for _ in range(30):
            progress.update()
        progress.start(200, "stage 2 of 2 (language model)")
        for _ in range(200):
            progress.update(loss=0.5)
    assert len(lines) == 20, lines
    assert lines[0].startswith("  building builtin:x, stage 1 of 2 (vision tower): 10% (3/30 steps, ")
    assert [line.split(": ")[1].split(" ")[0] for line in lines[:10]] == [f"{10 * k}%" for k in range(1, 11)]
    assert lines[10].startswith("  building builtin:x, stage 2 of 2 (language model): 10% (20/200 steps, ")
    assert "s left, loss 0.500)" in lines[10]
    assert lines[-1].startswith("  building builtin:x, stage 2 of 2 (language model): 100% (200/200 steps, ")


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_the_recipe_builds_a_checkpoint_the_engine_loads(tmp_path, monkeypatch, family):
    """The real recipe's code path at toy size, for each builtin family (Qwen precomputes the
    frozen vision side's output, LLaVA runs the plain forward)."""
    from vlsweep import demo
    from vlsweep.config import ModelConfig
    from vlsweep.demo import builtin
    from vlsweep.trials import load_base

    size = {"hidden": 32, "layers": 1, "vision_layers": 1, "heads": 2}
    if family == "llava":
        size["image_size"] = 112
    recipe = builtin.Recipe(
        family,
        size,
        pretrain_steps=4,
        one_word_steps=2,
        n_samples=8,
        one_word_samples=4,
        vision_samples=8,
        vision_steps=2,
        batch_size=4,
        vision_batch_size=4,
        minutes=0.1,
    )
    monkeypatch.setenv("VLSWEEP_CACHE", str(tmp_path))
    monkeypatch.setitem(builtin.RECIPES, "test-tiny", recipe)
    logged: list[str] = []
    path = builtin.ensure_builtin("test-tiny", log=logged.append)
    assert (
        path == builtin.builtin_path("test-tiny")
        and path.name == f"test-tiny-r{builtin.RECIPE_VERSION}-s1234"
    )
    assert any(x.startswith("building builtin:test-tiny, first run only") for x in logged), logged
    assert any(x.startswith("built builtin:test-tiny in ") for x in logged), logged
    info = json.loads((path / "vlsweep_builtin.json").read_text())
    assert info["recipe_version"] == builtin.RECIPE_VERSION and info["threads"] == builtin.BUILD_THREADS
    with pytest.raises(UserInputError, match="resolve it to its checkpoint with vlsweep.demo.resolve"):
        load_base(ModelConfig(name_or_path="builtin:test-tiny", device="cpu"))
    base = load_base(demo.resolve_model(ModelConfig(name_or_path="builtin:test-tiny", device="cpu")))
    assert base.model_type == family and base.source == str(path)
    assert builtin.ensure_builtin("test-tiny", log=logged.append) == path  # cached: no second build
    assert sum(x.startswith("building") for x in logged) == 1


def test_the_frozen_vision_shortcut_gives_the_plain_forward_logits(tiny_checkpoint, demo_data):
    """Stage 2 passes precomputed visual tokens and M-RoPE positions to Qwen models: the
    logits must be the model's own."""
    import torch

    from vlsweep.config import DEFAULT_PROMPTS, ModelConfig
    from vlsweep.demo.builtin import _frozen_vision_forward
    from vlsweep.trials.batching import Encoder, collate
    from vlsweep.trials.data import load_records
    from vlsweep.trials.modeling import load_base

    base = load_base(ModelConfig(name_or_path=str(tiny_checkpoint("qwen2_vl")), device="cpu"))
    encoder = Encoder(base.processor, base.family, base.codec, dict(DEFAULT_PROMPTS))
    records, _ = load_records(demo_data / "train.jsonl")
    samples = [encoder.encode(r).full for r in records[:6]]
    idx = [5, 0, 3]  # OCR and grounding samples of different lengths in one batch
    batch = collate([samples[i] for i in idx], pad_id=base.processor.tokenizer.pad_token_id, left=False)
    batch.pop("labels")
    with torch.no_grad():
        plain = base.model(**batch, use_cache=False).logits
        fast = _frozen_vision_forward(base.model, samples)(idx, batch)
    mask = batch["attention_mask"].bool()
    assert torch.allclose(plain[mask], fast[mask], atol=1e-5), (plain[mask] - fast[mask]).abs().max()
