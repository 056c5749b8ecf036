"""Builtin models that need no download: tiny VLMs that already half-know the demo task.

``builtin:tiny-qwen2-vl`` and ``builtin:tiny-llava`` are built on first use: a tiny
random checkpoint of the real family (tokenizer, processor and chat template included),
then a short full pretraining on synthetic data rendered in another style than the demo
data. The result is saved with ``save_pretrained`` into the cache and loaded from there
through the Auto classes, like any checkpoint. The build is deterministic: a recipe
version and the seed name the cache entry.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlsweep.trials.modeling import cache_dir

RECIPE_VERSION = 2


@dataclass(frozen=True)
class Recipe:
    family: str
    size: dict[str, int]
    pretrain_steps: int
    batch_size: int = 16
    lr: float = 2e-3
    n_samples: int = 1024
    seed: int = 1234
    # A from-scratch vision tower at the usual 0.02 init gives nearly the same features for
    # every image, and the LLM learns to ignore them; a wider init makes them informative.
    vision_init_std: float = 0.1


RECIPES = {
    "tiny-qwen2-vl": Recipe(
        "qwen2_vl", {"hidden": 96, "layers": 2, "vision_layers": 2, "heads": 4}, pretrain_steps=2500
    ),
    "tiny-llava": Recipe(
        "llava",
        {"hidden": 96, "layers": 2, "vision_layers": 2, "heads": 4, "image_size": 112},
        pretrain_steps=2500,
    ),
}


def builtin_path(name: str) -> Path:
    recipe = RECIPES[name]
    return cache_dir() / "models" / f"{name}-r{RECIPE_VERSION}-s{recipe.seed}"


def ensure_builtin(name: str, *, log: Any = print) -> Path:
    """Path of the builtin checkpoint, building (and caching) it on first use."""
    from vlsweep.errors import UserInputError

    if name not in RECIPES:
        raise UserInputError(
            f"model.name_or_path: unknown builtin model {name!r}; "
            f"choose one of {sorted('builtin:' + n for n in RECIPES)}"
        )
    path = builtin_path(name)
    if (path / "config.json").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    log(f"building builtin:{name} (first use; cached in {path}) ...")
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=path.parent))
    try:
        build(name, tmp, log=log)
        try:
            tmp.rename(path)
        except OSError:
            # Another process finished the same deterministic build first.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"built builtin:{name} in {time.perf_counter() - t0:.1f}s")
    return path


def build(name: str, out: Path, *, log: Any = None) -> dict[str, float]:
    """Make the tiny checkpoint and pretrain it fully on pretrain-style synthetic data."""
    from vlsweep.config import DEFAULT_PROMPTS
    from vlsweep.trials.batching import Encoder, collate
    from vlsweep.trials.codecs import CODECS
    from vlsweep.trials.data import TaskMixer, load_records
    from vlsweep.trials.engine import weighted_loss
    from vlsweep.trials.families import FAMILIES
    from vlsweep.trials.synth import write_dataset
    from vlsweep.trials.tiny import BUILDERS

    recipe = RECIPES[name]
    torch.manual_seed(recipe.seed)
    model, processor = BUILDERS[recipe.family](**recipe.size)
    family = FAMILIES[recipe.family]
    vision = re.compile(family.groups["vision"])
    for mod_name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)) and vision.match(
            mod_name + "."
        ):
            torch.nn.init.normal_(module.weight, std=recipe.vision_init_std)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_dataset(
            Path(tmp), n_train=recipe.n_samples, n_val=1, seed=recipe.seed, style="pretrain"
        )
        records, problems = load_records(paths["train"])
        assert not problems, problems
        encoder = Encoder(processor, family, CODECS[family.box_codec], dict(DEFAULT_PROMPTS))
        encoded = [encoder.encode(r) for r in records]
    tasks = sorted({r.task for r in records})
    task_index = {t: i for i, t in enumerate(tasks)}
    weights = torch.full((len(tasks),), 1.0 / len(tasks))
    pad_id = encoder.tokenizer.pad_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    from transformers import get_cosine_schedule_with_warmup

    scheduler = get_cosine_schedule_with_warmup(optimizer, recipe.pretrain_steps // 20, recipe.pretrain_steps)
    mixer = TaskMixer([r.task for r in records], 1.0, recipe.seed)
    model.train()
    loss = torch.zeros(())
    for step in range(1, recipe.pretrain_steps + 1):
        idx = mixer.batch(recipe.batch_size)
        batch = collate([encoded[i].full for i in idx], pad_id=pad_id, left=False)
        labels = batch.pop("labels")
        task_ids = torch.tensor([task_index[records[i].task] for i in idx])
        logits = model(**batch, use_cache=False).logits
        loss, _, _ = weighted_loss(logits, labels, task_ids, weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if log and step % 100 == 0:
            log(f"  pretraining step {step}/{recipe.pretrain_steps}: loss {float(loss.detach()):.3f}")
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return {"final_loss": float(loss.detach())}
