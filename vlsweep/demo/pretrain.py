"""How the builtin models are made: the recipe's two pretraining stages (``build``) and
the progress lines a build shows (``BuildProgress``).

Run by ``vlsweep builtin rebuild`` (``rebuilding.rebuild``), never where the demo runs:
the weights it made ship with the package (vlsweep/demo/builtin.py says why).
"""

from __future__ import annotations

import contextlib
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vlsweep.demo.builtin import RECIPE_VERSION, RECIPES, cpu_name


class BuildProgress:
    """The build's progress for whoever waits on it: a tqdm bar with its estimate on a
    terminal; in a log (CI, a pipe) a line every 10% with the elapsed time and the
    estimate, instead of a bar redrawn thousands of times."""

    def __init__(self, title: str, log: Any, *, stream: Any = None):
        self.title, self.log = title, log
        self.stream = stream if stream is not None else sys.stderr
        self.bar: Any = None
        self.total = 0
        self.done = 0
        self.t0 = time.perf_counter()
        self.tenth = 1  # the next line is due at tenth / 10 of the steps
        self.label = title

    def __enter__(self) -> BuildProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def start(self, total: int, stage: str = "") -> None:
        """``total`` units of work (training steps) of one stage follow; each stage has its
        own estimate (a vision step costs several language-model steps)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.total, self.done, self.tenth = total, 0, 1
        self.t0 = time.perf_counter()
        self.label = f"{self.title}, {stage}" if stage else self.title
        if getattr(self.stream, "isatty", lambda: False)():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.label, unit="step", file=self.stream, mininterval=0.5)

    def update(self, n: int = 1, **stats: float) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if stats:
                self.bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items()}, refresh=False)
            return
        if self.total and 10 * self.done >= self.tenth * self.total:
            self.tenth = 10 * self.done // self.total + 1
            elapsed = time.perf_counter() - self.t0
            left = elapsed * (self.total - self.done) / max(self.done, 1)
            extra = "".join(f", {k} {v:.3f}" for k, v in stats.items())
            self.log(
                f"  {self.label}: {100 * self.done // self.total}% ({self.done}/{self.total} steps, "
                f"{elapsed:.0f} s, about {left:.0f} s left{extra})"
            )


@dataclass
class _Scene:
    """One pretraining sample with the annotations its vision stage supervises."""

    record: Any
    glyphs: list[tuple[str, list[int]]]
    words: dict[str, list[int]]


def _scenes(
    out: Path,
    n: int,
    seed: int,
    *,
    ocr_style: str = "pretrain",
    grounding_style: str = "pretrain",
    ocr: bool = True,
    n_words: int | None = None,
) -> list[_Scene]:
    """``n`` pretraining images written under ``out``: half OCR scenes of ``ocr_style`` and
    half grounding scenes of ``grounding_style`` (all grounding without ``ocr``), each
    grounding scene as one sample per word in it."""
    import random

    from vlsweep.demo.synth import STYLES, grounding_scene, ocr_scene
    from vlsweep.trials import Record

    rng = random.Random(seed)
    scenes = []
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = out / f"{i:05d}.png"
        if ocr and i % 2 == 0:
            img, text, glyphs = ocr_scene(rng, STYLES[ocr_style])
            rec = Record(image=path, task="ocr", size=img.size, text=text)
            scenes.append(_Scene(rec, glyphs, {}))
        else:
            img, words = grounding_scene(rng, STYLES[grounding_style], n_words)
            # Every word of the scene is asked about: the same image with another query
            # wants another box, so the answer cannot be learnt from the image alone.
            for target in sorted(words):
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


def _overlap(a: Sequence[float], b: Sequence[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def _token_targets(scene: _Scene, rows: int, cols: int) -> torch.Tensor:
    """(rows*cols, 4) targets: glyph, colour, row, column; -100 where a target does not apply."""
    from vlsweep.demo.synth import COLOR_NAMES

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


def _image_inputs(processor: Any, path: Path) -> dict[str, torch.Tensor]:
    """What the processor makes of an image for the vision tower, without any text."""
    from PIL import Image

    with Image.open(path) as im:
        image = im.convert("RGB")
    out = processor.image_processor(images=[image], return_tensors="pt")
    return {k: v for k, v in out.items() if k in ("pixel_values", "image_grid_thw")}


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


def _frozen_vision_forward(model: Any, samples: list[dict[str, torch.Tensor]]) -> Any:
    """``forward(indices, batch) -> logits`` for stage 2. With the vision side frozen its
    output is the same at every step, so for Qwen models each sample's visual tokens and
    M-RoPE positions are computed once and passed in (the model's own ``mm_encoder_outputs``
    and ``position_ids`` inputs), a fifth less time per step, the same logits; other
    families run the plain forward."""
    if not hasattr(model.model, "get_rope_index"):
        return lambda idx, batch: model(**batch, use_cache=False).logits
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    feats, positions = [], []
    with torch.no_grad():
        for f in samples:
            feats.append(_image_tokens(model, f)[0])
            pos, _ = model.model.get_rope_index(
                f["input_ids"],
                image_grid_thw=f["image_grid_thw"],
                attention_mask=f["attention_mask"],
                mm_token_type_ids=f["mm_token_type_ids"],
            )
            positions.append(pos)

    def forward(idx: list[int], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        length = batch["input_ids"].shape[1]
        # Right padding: a pad's position is never attended to, any value does.
        pos = torch.cat([F.pad(positions[i], (0, length - positions[i].shape[-1])) for i in idx], dim=1)
        # Qwen's vision tower returns one tensor per image here, as its own forward does.
        images = BaseModelOutputWithPooling(pooler_output=[feats[i] for i in idx])  # type: ignore[arg-type]
        return model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=pos,
            mm_encoder_outputs={"image": images},
            use_cache=False,
        ).logits

    return forward


def build(name: str, out: Path, *, progress: BuildProgress | None = None) -> dict[str, Any]:
    """Make the tiny checkpoint, pretrain it on synthetic data and save it under ``out``;
    returns its provenance (``rebuilding.rebuild`` writes it beside the weights).

    Two stages. A tiny language model trained from scratch learns to look at the image
    only very slowly (measured: no progress on single-digit reading in 600 steps, while a
    linear head on the vision tower reads digits after 150), so stage 1 trains the vision
    tower and projector alone with token-level heads (which digit, which colour, which
    row and column each visual token shows), on plain print and on grounding scenes of
    varied renderings. Stage 2 trains the language model on the answers with the vision
    side frozen: trained next to a random language model, whose gradients are noise at
    first, the tower loses what stage 1 taught it (measured: a linear probe reads each
    token's row at 1.00 after stage 1, 0.36 at the end of a stage 2 that trains it, chance
    being 0.33; the model then never learnt to localize), the pattern of Kumar et al.
    2022 (linear probing, then fine-tuning). Its first ``one_word_steps`` ask about
    scenes of one word (where it is), the rest about scenes of two or three (which one).
    Measured figures: docs/benchmarks.md.

    Reads as its steps: the model (``_setup_model``), the pretraining data
    (``_setup_data``), stage 1 (``_train_vision``), stage 2 (``_train_language``), the save.
    The order of the steps is the order of the random draws, which the shipped weights'
    checksums hold to.
    """
    from vlsweep.config import DEFAULT_PROMPTS
    from vlsweep.trials import CODECS, Encoder

    recipe = RECIPES[name]
    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed)
    model, processor, family = _setup_model(recipe)
    encoder = Encoder(processor, family, CODECS[family.box_codec], dict(DEFAULT_PROMPTS))
    data = _setup_data(recipe, processor, encoder, progress)
    data_seconds = time.perf_counter() - t0
    vision_loss = _train_vision(model, family, recipe, data, progress)
    tasks, per_task = _train_language(model, family, recipe, data, encoder.tokenizer.pad_token_id, progress)
    _save(model, processor, out)
    return {
        "recipe": name,
        "recipe_version": RECIPE_VERSION,
        "seed": recipe.seed,
        "threads": torch.get_num_threads(),
        "data_seconds": round(data_seconds, 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "vision_loss": vision_loss,
        **{f"loss_{t}": float(per_task[i]) for i, t in enumerate(tasks)},
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "machine": cpu_name(),
    }


def _setup_model(recipe: Any) -> tuple[Any, Any, Any]:
    """The recipe's tiny model at random, its vision tower's layers drawn at the recipe's
    scale; with its processor and family."""
    from vlsweep.demo.tiny import BUILDERS
    from vlsweep.trials import FAMILIES

    model, processor = BUILDERS[recipe.family](**recipe.size)
    family = FAMILIES[recipe.family]
    vision = re.compile(family.groups["vision"])
    for mod_name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)) and vision.match(
            mod_name + "."
        ):
            torch.nn.init.normal_(module.weight, std=recipe.vision_init_std)
    if recipe.vision_from is not None:
        _take_vision_tower(model, vision, recipe.vision_from)
    return model, processor, family


def _take_vision_tower(model: Any, vision: re.Pattern[str], source: str) -> None:
    """Copy builtin:``source``'s vision tower (the parameters the family's ``vision`` group
    names: patch embedding and blocks, not the merger) into ``model`` bit for bit. Its
    shapes must be the same: the recipe sizes the tower by ``vision_hidden``."""
    from transformers import AutoModelForImageTextToText

    from vlsweep.demo.builtin import builtin_checkpoint

    # Loaded as a model, not read from its file: transformers names the parameters on disk
    # otherwise than in the module (a checkpoint's own key mapping).
    with _no_progress_bar():
        loaded = AutoModelForImageTextToText.from_pretrained(builtin_checkpoint(source), dtype=torch.float32)
    state = {n: p.detach() for n, p in loaded.named_parameters()}
    own = {n: p for n, p in model.named_parameters() if vision.match(n)}
    missing = sorted(set(own) - set(state))
    wrong = sorted(n for n in own if n in state and state[n].shape != own[n].shape)
    if missing or wrong or not own:
        raise ValueError(
            f"builtin:{source}'s vision tower does not fit: missing {missing}, other shapes {wrong}"
        )
    with torch.no_grad():
        for name, param in own.items():
            param.copy_(state[name])


@dataclass
class _PretrainData:
    """The rendered scenes of both stages, encoded: ``sets`` by name ("vision" for stage 1,
    "main" and "one_word" for stage 2), ``encoded`` stage 2's samples, ``vision_inputs``
    stage 1's image inputs (one per scene)."""

    sets: dict[str, list[_Scene]]
    encoded: dict[str, list[dict[str, torch.Tensor]]]
    vision_inputs: list[dict[str, torch.Tensor]]

    @property
    def image_keys(self) -> list[str]:
        return [k for k in self.encoded["main"][0] if k in ("pixel_values", "image_grid_thw")]


def _setup_data(recipe: Any, processor: Any, encoder: Any, progress: BuildProgress | None) -> _PretrainData:
    """Render and encode the scenes of both stages (in a temporary directory)."""
    n = recipe.n_samples
    if progress is not None:
        total = n + recipe.one_word_samples + recipe.vision_samples
        progress.log(f"  rendering and encoding {total} pretraining images ...")
    with tempfile.TemporaryDirectory() as tmp:
        sets = {
            "vision": _scenes(
                Path(tmp, "v"),
                recipe.vision_samples,
                recipe.seed + 1,
                ocr_style=recipe.vision_styles[0],
                grounding_style=recipe.vision_styles[1],
            ),
            "main": _scenes(Path(tmp, "m"), n, recipe.seed),
            "one_word": _scenes(
                Path(tmp, "o"), recipe.one_word_samples, recipe.seed + 7, ocr=False, n_words=1
            ),
        }
        encoded = {k: [encoder.encode(s.record).full for s in sets[k]] for k in ("main", "one_word")}
        # Stage 1 looks at the images only: each is processed once, whatever its queries.
        images: dict[Path, dict[str, torch.Tensor]] = {}
        for scene in sets["vision"]:
            if scene.record.image not in images:
                images[scene.record.image] = _image_inputs(processor, scene.record.image)
        vision_inputs = [images[scene.record.image] for scene in sets["vision"]]
    return _PretrainData(sets=sets, encoded=encoded, vision_inputs=vision_inputs)


def _vision_side(family: Any) -> re.Pattern[str]:
    return re.compile(f"(?:{family.groups['vision']})|(?:{family.groups['projector']})")


def _train_vision(
    model: Any, family: Any, recipe: Any, data: _PretrainData, progress: BuildProgress | None
) -> float:
    """Stage 1: the vision tower and projector (the projector alone for a recipe with
    ``vision_from``) with token-level heads (which digit, which colour, which row and
    column each visual token shows). Returns the last loss."""
    if progress is not None:
        progress.start(
            recipe.vision_steps,
            "stage 1 of 2 (" + ("projector" if recipe.vision_from else "vision tower") + ")",
        )
    model.train()
    v_enc, image_keys = data.vision_inputs, data.image_keys
    # A tower taken from another builtin stays as it is: the projector alone learns to
    # carry what it says to this language model's width.
    side = re.compile(family.groups["projector"]) if recipe.vision_from else _vision_side(family)
    vision_params = [p for n_, p in model.named_parameters() if side.match(n_)]
    if recipe.vision_from:
        tower = re.compile(family.groups["vision"])
        for n_, p in model.named_parameters():
            p.requires_grad_(not tower.match(n_))
    sizes = (_GLYPH_CLASSES, _COLOR_CLASSES, _POS_CLASSES, _POS_CLASSES)
    head = torch.nn.Linear(model.config.get_text_config().hidden_size, sum(sizes))
    first = _image_tokens(model, {k: v_enc[0][k] for k in image_keys})[0]
    targets = [
        _token_targets(s, *_token_grid(e, first.shape[0]))
        for s, e in zip(data.sets["vision"], v_enc, strict=True)
    ]
    opt1 = torch.optim.AdamW([*vision_params, *head.parameters()], lr=recipe.vision_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(recipe.seed)
    loss: Any = torch.zeros(())
    for _ in range(recipe.vision_steps):
        idx = torch.randint(0, len(v_enc), (recipe.vision_batch_size,), generator=gen).tolist()
        batch = {k: torch.cat([v_enc[i][k] for i in idx]) for k in image_keys}
        logits = head(torch.cat(_image_tokens(model, batch))).split(sizes, dim=-1)
        target = torch.cat([targets[i] for i in idx])
        loss = sum(
            torch.nn.functional.cross_entropy(lg, target[:, j], ignore_index=-100)
            for j, lg in enumerate(logits)
        )
        loss.backward()
        opt1.step()
        opt1.zero_grad(set_to_none=True)
        if progress is not None:
            stats: dict[str, Any] = {"vision loss": float(loss.detach())}
            progress.update(**stats)
    return float(loss.detach())


def _train_language(
    model: Any, family: Any, recipe: Any, data: _PretrainData, pad_id: int, progress: BuildProgress | None
) -> tuple[list[str], torch.Tensor]:
    """Stage 2: the language model on the answers, the vision side frozen; scenes of one
    word first (``one_word_steps``), then of two or three. Returns the tasks and each
    one's last loss."""
    import random

    from transformers import get_cosine_schedule_with_warmup

    from vlsweep.trials import TaskMixer, collate, task_losses, weighted_sum

    side = _vision_side(family)
    for n_, p in model.named_parameters():
        p.requires_grad_(not side.match(n_))
    params = [p for p in model.parameters() if p.requires_grad]
    sets = data.sets
    records = [s.record for s in sets["main"] + sets["one_word"]]
    full = data.encoded["main"] + data.encoded["one_word"]
    main = list(range(len(sets["main"])))
    one_word = [i for i in main if records[i].task == "ocr"] + list(range(len(main), len(records)))
    mixers = [
        (ix, TaskMixer([records[i].task for i in ix], 1.0, recipe.seed + k))
        for k, ix in enumerate((one_word, main))
    ]
    tasks = sorted({r.task for r in records})
    task_index = {t: i for i, t in enumerate(tasks)}
    weights = torch.tensor(
        [recipe.grounding_weight if t == "grounding" else 1 - recipe.grounding_weight for t in tasks]
    )
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, recipe.pretrain_steps // 20, recipe.pretrain_steps)
    random.seed(recipe.seed)
    per_task = torch.zeros(len(tasks))
    forward = _frozen_vision_forward(model, full)
    if progress is not None:  # after the visual tokens are computed, so the estimate is the steps'
        progress.start(recipe.pretrain_steps, "stage 2 of 2 (language model)")
    for step in range(1, recipe.pretrain_steps + 1):
        ix, mixer = mixers[0] if step <= recipe.one_word_steps else mixers[1]
        idx = [ix[i] for i in mixer.batch(recipe.batch_size)]
        batch = collate([full[i] for i in idx], pad_id=pad_id, left=False)
        labels = batch.pop("labels")
        task_ids = torch.tensor([task_index[records[i].task] for i in idx])
        logits = forward(idx, batch)
        means, _ = task_losses(logits, labels, task_ids, len(tasks))
        loss, per_task = weighted_sum(means, weights), means.detach()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if progress is not None:
            progress.update(loss=float(loss.detach()))
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return tasks, per_task


def _save(model: Any, processor: Any, out: Path) -> None:
    """The model and processor, without transformers' progress bar."""
    with _no_progress_bar():
        model.save_pretrained(out)
        processor.save_pretrained(out)


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """transformers' progress bars off: the build prints its own progress, and a bar for
    one small file ("Loading weights", "Writing model shards") is noise in its log."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
