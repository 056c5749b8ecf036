"""The builtin models: shipped weights checked against their checksums and held to their
recipe's probe, and the rebuild that makes them (nothing half-written if it is killed).

The rebuild tests build a toy recipe (a few seconds) into a temporary directory, in real
subprocesses where a SIGKILL is involved, with the moment that matters set by the test
rather than by timing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vlsweep.demo import builtin
from vlsweep.demo.builtin import RECIPES
from vlsweep.demo.pretrain import BuildProgress
from vlsweep.demo.rebuilding import rebuild
from vlsweep.errors import UserInputError

TOY = dict(
    pretrain_steps=4,
    one_word_steps=2,
    n_samples=8,
    one_word_samples=4,
    vision_samples=8,
    vision_steps=2,
    batch_size=4,
    vision_batch_size=4,
)

# Registers a toy recipe and rebuilds it into argv[1]; "kill" SIGKILLs the process at the
# first training step.
SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from vlsweep.demo import builtin, pretrain, rebuilding

    builtin.RECIPES["test-tiny"] = builtin.Recipe(
        "qwen2_vl", {"hidden": 32, "layers": 1, "vision_layers": 1, "heads": 2}, **TOY
    )

    def update(self, n=1, **stats):
        os.kill(os.getpid(), signal.SIGKILL)

    if sys.argv[2] == "kill":
        pretrain.BuildProgress.update = update
    rebuilding.rebuild("test-tiny", Path(sys.argv[1]), log=lambda m: print(m, flush=True))
    print("DONE", flush=True)
    """
).replace("**TOY", ", ".join(f"{k}={v}" for k, v in TOY.items()))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_the_shipped_weights_match_their_checksums(name):
    path = builtin.builtin_path(name)
    listed = {line.split("  ", 1)[1] for line in (path / builtin.CHECKSUMS).read_text().splitlines()}
    # Every file of the checkpoint is listed: a file added without a checksum is caught too.
    assert listed == {f.name for f in path.iterdir() if f.name != builtin.CHECKSUMS}
    assert {"config.json", "model.safetensors", "tokenizer.json", builtin.PROVENANCE} <= listed
    assert builtin.verify(path) == []
    assert builtin.builtin_checkpoint(name) == path


def test_a_damaged_shipped_file_is_refused_with_the_file_and_the_fix(tmp_path, monkeypatch):
    shutil.copytree(builtin.builtin_path("tiny-qwen2-vl"), tmp_path / "tiny-qwen2-vl")
    weights = tmp_path / "tiny-qwen2-vl" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(builtin, "WEIGHTS", tmp_path)
    with pytest.raises(UserInputError) as err:
        builtin.builtin_checkpoint("tiny-qwen2-vl")
    assert f"{weights} does not match its checksum in SHA256SUMS" in err.value.problems[0]
    assert "vlsweep builtin rebuild tiny-qwen2-vl -o DIR" in err.value.problems[-1]


def test_a_listing_that_leaves_files_out_or_is_not_sha256sum_output_is_damaged(tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(builtin.builtin_path("tiny-qwen2-vl"), path)
    (path / "extra.bin").write_bytes(b"smuggled in")
    listing = path / builtin.CHECKSUMS
    lines = listing.read_text().splitlines()
    kept = [x for x in lines if not x.endswith("  model.safetensors")]
    listing.write_text("\n".join([*kept, "not-a-hash *config.json"]) + "\n")
    problems = builtin.verify(path)
    assert f"{listing}:{len(kept) + 1}: not a `sha256sum` line" in problems[0]
    assert f"{listing} does not list model.safetensors" in problems
    assert f"{path / 'extra.bin'} is not in SHA256SUMS" in problems
    assert f"{path / 'model.safetensors'} is not in SHA256SUMS" in problems
    listing.write_text("")
    assert f"{listing} does not list config.json" in builtin.verify(path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_the_shipped_bases_meet_their_recipes_probe(name):
    """Untrained, on fresh scenes of the style it was pretrained on, each base reads and
    boxes the asked-for word as its recipe says (a rebuild is held to the same probe:
    benchmarks/builtin_rebuild.py)."""
    from vlsweep.demo.probing import probe

    figures = probe(builtin.builtin_path(name))
    assert RECIPES[name].meets(figures), (figures, RECIPES[name])
    shipped = json.loads((builtin.builtin_path(name) / builtin.PROVENANCE).read_text())
    assert shipped["probe"]["meets_recipe"] and shipped["threads"] == builtin.BUILD_THREADS


def _rebuild(tmp_path: Path, hook: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "out"), hook],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_a_killed_rebuild_leaves_nothing_loadable(tmp_path):
    killed = _rebuild(tmp_path, "kill")
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "out").exists()
    left = [p.name for p in tmp_path.iterdir()]
    assert left and all(name.startswith(".out.tmp-") for name in left), left
    done = _rebuild(tmp_path, "go")
    output = done.communicate(timeout=300)[0]
    assert done.returncode == 0 and "DONE" in output, output
    assert builtin.verify(tmp_path / "out") == []
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the killed one's leftovers are gone


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
def test_a_rebuild_writes_a_checked_checkpoint_that_builtin_names_load(tmp_path, monkeypatch, family):
    """The real recipe's code path at toy size, for each builtin family (Qwen precomputes the
    frozen vision side's output, LLaVA runs the plain forward)."""
    from vlsweep import demo
    from vlsweep.config import ModelConfig
    from vlsweep.trials import load_base

    size = {"hidden": 32, "layers": 1, "vision_layers": 1, "heads": 2}
    if family == "llava":
        size["image_size"] = 112
    monkeypatch.setitem(builtin.RECIPES, "test-tiny", builtin.Recipe(family, size, **TOY))
    monkeypatch.setattr(builtin, "WEIGHTS", tmp_path)
    logged: list[str] = []
    info = rebuild("test-tiny", tmp_path / "test-tiny", log=logged.append)
    path = demo.resolve_model(ModelConfig(name_or_path="builtin:test-tiny", device="cpu")).name_or_path
    assert path == str(tmp_path / "test-tiny")
    info.pop("identical_to_shipped")  # the build compared with itself here: checked below
    assert any(x.startswith("  building builtin:test-tiny, stage 2 of 2") for x in logged), logged
    provenance = json.loads((tmp_path / "test-tiny" / builtin.PROVENANCE).read_text())
    # (as JSON text: a toy build's losses may be NaN, which equals nothing)
    assert json.dumps(provenance, sort_keys=True) == json.dumps(info, sort_keys=True)
    assert info["recipe_version"] == builtin.RECIPE_VERSION
    assert info["threads"] == builtin.BUILD_THREADS and info["machine"]
    # A toy model reads nothing: the probe says so rather than passing it.
    assert (
        set(info["probe"]) >= {"cer", "iou", "iou_se", "meets_recipe"} and not info["probe"]["meets_recipe"]
    )
    assert builtin.verify(tmp_path / "test-tiny") == []
    with pytest.raises(UserInputError, match="resolve it to its checkpoint with vlsweep.demo.resolve"):
        load_base(ModelConfig(name_or_path="builtin:test-tiny", device="cpu"))
    assert load_base(ModelConfig(name_or_path=path, device="cpu")).model_type == family
    with pytest.raises(UserInputError, match="exists and is not empty"):
        rebuild("test-tiny", tmp_path / "test-tiny", log=logged.append)
    # A rebuild elsewhere gives the weights in WEIGHTS byte for byte, and says so; against
    # other weights it says they differ.
    assert rebuild("test-tiny", tmp_path / "again", log=logged.append)["identical_to_shipped"]
    shipped = tmp_path / "test-tiny" / "model.safetensors"
    data = shipped.read_bytes()
    shipped.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert not rebuild("test-tiny", tmp_path / "third", log=logged.append)["identical_to_shipped"]


def test_the_frozen_vision_shortcut_gives_the_plain_forward_logits(tiny_checkpoint, demo_data):
    """Stage 2 passes precomputed visual tokens and M-RoPE positions to Qwen models: the
    logits must be the model's own."""
    import torch

    from vlsweep.config import DEFAULT_PROMPTS, ModelConfig
    from vlsweep.demo.pretrain import _frozen_vision_forward
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


def test_every_shipped_weight_file_is_package_data():
    """A wheel or a non-editable install carries exactly what pyproject's package-data
    names: every file of every shipped base must match one of its patterns."""
    import fnmatch
    import re

    root = Path(builtin.__file__).resolve().parents[2]
    # (tomllib is Python 3.11+; the project supports 3.10)
    section = (root / "pyproject.toml").read_text().split("[tool.setuptools.package-data]", 1)[1]
    patterns = json.loads(re.search(r"^vlsweep = (\[.*\])$", section, re.M).group(1))
    for name in RECIPES:
        for file in builtin.builtin_path(name).iterdir():
            rel = file.relative_to(root / "vlsweep").as_posix()
            # glob semantics: a `*` stands for one path component, never a `/`
            parts = rel.split("/")
            assert any(
                len(q := p.split("/")) == len(parts) and all(map(fnmatch.fnmatch, parts, q)) for p in patterns
            ), (rel, patterns)


def test_a_recipe_with_vision_from_takes_that_towers_weights_bit_for_bit(tmp_path, monkeypatch):
    """A larger sibling shares its family's vision tower (as Qwen2-VL 2B, 7B and 72B do):
    the build copies builtin:tiny-qwen2-vl's patch embedding and blocks and never trains
    them; the merger, which widens to the new language model, is its own."""
    import re

    import torch
    from transformers import AutoModelForImageTextToText

    from vlsweep.trials import FAMILIES

    size = {"hidden": 48, "layers": 1, "vision_layers": 2, "heads": 2, "vision_hidden": 96, "vision_heads": 4}
    recipe = builtin.Recipe("qwen2_vl", size, vision_from="tiny-qwen2-vl", **TOY)
    monkeypatch.setitem(builtin.RECIPES, "test-sibling", recipe)
    rebuild("test-sibling", tmp_path / "sibling", log=lambda _: None)

    def weights(path):
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
        return {n: p.detach() for n, p in model.named_parameters()}

    source, built = weights(builtin.builtin_path("tiny-qwen2-vl")), weights(tmp_path / "sibling")
    family = FAMILIES["qwen2_vl"]
    tower = [k for k in built if re.match(family.groups["vision"], k)]
    merger = [k for k in built if re.match(family.groups["projector"], k)]
    assert tower and merger
    assert all(built[k].equal(source[k]) for k in tower)
    assert built["model.visual.merger.mlp.2.weight"].shape == (48, 384)

    # A tower of another size cannot be taken, and the build says whose and why.
    small = {**size, "vision_hidden": 64}
    monkeypatch.setitem(
        builtin.RECIPES, "test-misfit", builtin.Recipe("qwen2_vl", small, vision_from="tiny-qwen2-vl", **TOY)
    )
    with pytest.raises(ValueError, match="builtin:tiny-qwen2-vl's vision tower does not fit"):
        rebuild("test-misfit", tmp_path / "misfit", log=lambda _: None)
