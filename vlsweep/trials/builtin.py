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

RECIPE_VERSION = 3


@dataclass(frozen=True)
class Recipe:
    family: str
    size: dict[str, int]
    pretrain_steps: int
    batch_size: int = 16
    lr: float = 2e-3
    n_samples: int = 2048
    vision_steps: int = 300
    vision_batch_size: int = 32
    vision_lr: float = 1e-3
    # Reading the digits converges long before grounding does; most of stage 2's loss
    # weight goes to grounding.
    grounding_weight: float = 0.75
    seed: int = 1234
    # A from-scratch vision tower at the usual 0.02 init gives nearly the same features for
    # every image, and the LLM learns to ignore them; a wider init makes them informative.
    vision_init_std: float = 0.1


RECIPES = {
    "tiny-qwen2-vl": Recipe(
        "qwen2_vl", {"hidden": 96, "layers": 2, "vision_layers": 2, "heads": 4}, pretrain_steps=4000
    ),
    "tiny-llava": Recipe(
        "llava",
        {"hidden": 96, "layers": 2, "vision_layers": 2, "heads": 4, "image_size": 112},
        pretrain_steps=4000,
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


@dataclass
class _Scene:
    """One pretraining sample with the annotations its vision stage supervises."""

    record: Any
    glyphs: list[tuple[str, list[int]]]
    words: dict[str, list[int]]


def _scenes(out: Path, n: int, seed: int) -> list[_Scene]:
    """Pretrain-style samples, half OCR and half grounding, written under ``out``."""
    import random

    from vlsweep.trials.data import Record
    from vlsweep.trials.synth import STYLES, grounding_scene, ocr_scene

    rng = random.Random(seed)
    style = STYLES["pretrain"]
    scenes = []
    for i in range(n):
        path = out / f"{i:05d}.png"
        if i % 2 == 0:
            img, text, glyphs = ocr_scene(rng, style)
            rec = Record(image=path, task="ocr", size=img.size, text=text)
            scenes.append(_Scene(rec, glyphs, {}))
        else:
            img, words = grounding_scene(rng, style)
            target = rng.choice(sorted(words))
            rec = Record(
                image=path, task="grounding", size=img.size, query=f"the {target} text", box=words[target]
            )
            scenes.append(_Scene(rec, [], words))
        img.save(path)
    return scenes


# Token-level targets of the vision stage: which digit a visual token shows (or none),
# which colour of word (or none), and where the token sits in the image.
_GLYPH_CLASSES = 11  # 0-9, none
_COLOR_CLASSES = 4  # none, red, green, blue
_POS_CLASSES = 8  # row / column index of the token


def _token_grid(feats: dict[str, torch.Tensor], n_tokens: int) -> tuple[int, int]:
    """(rows, cols) of the visual tokens the LLM sees, in row-major order."""
    if "image_grid_thw" in feats:  # Qwen: 14-px patches merged 2x2
        _, h, w = (int(v) for v in feats["image_grid_thw"][0])
        return h // 2, w // 2
    side = round(n_tokens**0.5)  # square ViT grid over the resized image
    assert side * side == n_tokens, n_tokens
    return side, side


def _overlap(a: list[float], b: list[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def _token_targets(scene: _Scene, rows: int, cols: int) -> torch.Tensor:
    """(rows*cols, 4) targets: glyph, colour, row, column; -100 where a target does not apply."""
    from vlsweep.trials.synth import COLOR_NAMES

    width, height = scene.record.size
    out = torch.full((rows * cols, 4), -100, dtype=torch.long)
    for r in range(rows):
        for c in range(cols):
            cell = [c * width / cols, r * height / rows, (c + 1) * width / cols, (r + 1) * height / rows]
            k = r * cols + c
            out[k, 2], out[k, 3] = min(r, _POS_CLASSES - 1), min(c, _POS_CLASSES - 1)
            if scene.record.task == "ocr":
                out[k, 1] = 0
                out[k, 0] = _GLYPH_CLASSES - 1
                for ch, box in scene.glyphs:
                    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                    if cell[0] <= cx < cell[2] and cell[1] <= cy < cell[3]:
                        out[k, 0] = int(ch)
            else:
                best, colour = 0.0, 0
                for name, box in scene.words.items():
                    inter = _overlap(cell, box)
                    smaller = min(
                        (box[2] - box[0]) * (box[3] - box[1]), (cell[2] - cell[0]) * (cell[3] - cell[1])
                    )
                    if inter >= 0.2 * smaller and inter > best:
                        best, colour = inter, 1 + COLOR_NAMES.index(name)
                out[k, 1] = colour
    return out


def _image_tokens(model: Any, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The projected visual tokens (what the LLM sees), one (n, hidden) tensor per image."""
    if "image_grid_thw" in batch:
        out = model.model.get_image_features(
            pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"]
        )
    else:
        cfg = model.config
        out = model.model.get_image_features(
            pixel_values=batch["pixel_values"],
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        )
    return list(out.pooler_output)


def build(name: str, out: Path, *, log: Any = None) -> dict[str, float]:
    """Make the tiny checkpoint and pretrain it on pretrain-style synthetic data.

    Two stages. A tiny language model trained from scratch learns to look at the image
    only very slowly (measured: no progress on single-digit reading in 600 steps, while a
    linear head on the vision tower reads digits after 150), so stage 1 trains the vision
    tower and projector alone with token-level heads (which digit, which colour, which
    row and column each visual token shows), and stage 2 trains the whole model on the
    answers, as a real VLM's pretraining would.
    """
    from transformers import get_cosine_schedule_with_warmup

    from vlsweep.config import DEFAULT_PROMPTS
    from vlsweep.trials.batching import Encoder, collate
    from vlsweep.trials.codecs import CODECS
    from vlsweep.trials.data import TaskMixer
    from vlsweep.trials.engine import weighted_loss
    from vlsweep.trials.families import FAMILIES
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
    encoder = Encoder(processor, family, CODECS[family.box_codec], dict(DEFAULT_PROMPTS))
    with tempfile.TemporaryDirectory() as tmp:
        scenes = _scenes(Path(tmp), recipe.n_samples, recipe.seed)
        encoded = [encoder.encode(s.record) for s in scenes]
    records = [s.record for s in scenes]
    image_keys = [k for k in encoded[0].full if k in ("pixel_values", "image_grid_thw")]
    model.train()

    # Stage 1: vision tower + projector with token-level heads.
    groups = re.compile(f"(?:{family.groups['vision']})|(?:{family.groups['projector']})")
    vision_params = [p for n, p in model.named_parameters() if groups.match(n)]
    sizes = (_GLYPH_CLASSES, _COLOR_CLASSES, _POS_CLASSES, _POS_CLASSES)
    head = torch.nn.Linear(model.config.get_text_config().hidden_size, sum(sizes))
    first = _image_tokens(model, {k: encoded[0].full[k] for k in image_keys})[0]
    targets = [
        _token_targets(s, *_token_grid(e.full, first.shape[0])) for s, e in zip(scenes, encoded, strict=True)
    ]
    opt1 = torch.optim.AdamW([*vision_params, *head.parameters()], lr=recipe.vision_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(recipe.seed)
    loss = torch.zeros(())
    for step in range(1, recipe.vision_steps + 1):
        idx = torch.randint(0, len(encoded), (recipe.vision_batch_size,), generator=gen).tolist()
        batch = {k: torch.cat([encoded[i].full[k] for i in idx]) for k in image_keys}
        logits = head(torch.cat(_image_tokens(model, batch))).split(sizes, dim=-1)
        target = torch.cat([targets[i] for i in idx])
        loss = sum(
            torch.nn.functional.cross_entropy(lg, target[:, j], ignore_index=-100)
            for j, lg in enumerate(logits)
        )
        loss.backward()
        opt1.step()
        opt1.zero_grad(set_to_none=True)
        if log and step % 100 == 0:
            log(f"  vision pretraining step {step}/{recipe.vision_steps}: loss {float(loss.detach()):.3f}")

    # Stage 2: the whole model on the answers.
    tasks = sorted({r.task for r in records})
    task_index = {t: i for i, t in enumerate(tasks)}
    weights = torch.tensor(
        [recipe.grounding_weight if t == "grounding" else 1 - recipe.grounding_weight for t in tasks]
    )
    pad_id = encoder.tokenizer.pad_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, recipe.pretrain_steps // 20, recipe.pretrain_steps)
    mixer = TaskMixer([r.task for r in records], 1.0, recipe.seed)
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
