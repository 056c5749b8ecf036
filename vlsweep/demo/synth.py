"""Synthetic OCR + grounding data: rendered text on images, with exact boxes.

Rendering styles share the task family: ``demo`` (what users fine-tune on), ``pretrain``
(plain black-on-white print, pure colours, larger digits), which the builtin base models
are pretrained on, and ``varied`` (a new background and new shades of each colour in
every scene), which their vision towers also see, so that what they learn about colour
and position carries over to renderings they were not trained on.

The demo's own dataset (``write_dataset``, docs/demo.md) models a table-grounding
fine-tune: grounding scenes are borderless tables of the ``demo`` style whose answer is
the box of the table *cell* holding the asked-for text (the convention of table datasets
such as PubTables-1M and FinTabNet), where the base model was pretrained to box the text
itself; a tenth of the training samples are plain-print OCR the base already reads (a
replay share, so the fine-tune keeps reading). Everything is deterministic by seed.
"""

from __future__ import annotations

import colorsys
import json
import random
from dataclasses import dataclass
from pathlib import Path

ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ23456789"
# OCR reads digit strings: ten glyph classes keep the task learnable for the builtin
# tiny models in a CPU-minute budget (a 31-class alphabet was not, measured).
OCR_ALPHABET = "0123456789"
COLOR_NAMES = ("red", "green", "blue")
# The demo dataset's size (``builtin:demo``, ``vlsweep data demo``): 384 validation
# samples, 192 per task, whatever the training mix.
DEMO_TRAIN, DEMO_VAL = 640, 384
# The share of OCR samples in the demo's training split (a replay share of what the base
# already reads); the validation split is half OCR, half grounding.
DEMO_OCR_SHARE = 0.1
# The retention split (``builtin:demo/retain``): scenes in the style the builtin base models
# were pretrained on, which they already answer; forgetting is measured on them.
DEMO_RETAIN = 64
OCR_SIZE = (140, 28)
GROUNDING_SIZE = (112, 84)
# A grounding scene is a borderless table of this many columns and rows; each word sits
# in a cell of its own.
GRID = (2, 3)


RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Style:
    font_sizes: tuple[int, int]  # the words of grounding scenes
    ocr_font_sizes: tuple[int, int]  # the digits of OCR scenes
    backgrounds: tuple[RGB, ...]
    ink: tuple[RGB, ...]
    colors: dict[str, RGB]
    ocr_len: tuple[int, int]
    # Each scene draws its background, its ink and each colour's shade anew (_palette).
    varied: bool = False


STYLES = {
    "pretrain": Style(
        font_sizes=(15, 20),
        ocr_font_sizes=(22, 24),
        backgrounds=((255, 255, 255),),
        ink=((0, 0, 0),),
        colors={"red": (255, 0, 0), "green": (0, 170, 0), "blue": (0, 0, 255)},
        ocr_len=(3, 5),
    ),
    "demo": Style(
        font_sizes=(15, 17),
        ocr_font_sizes=(19, 21),
        backgrounds=((236, 228, 210), (222, 230, 236), (240, 240, 232)),
        ink=((20, 30, 90), (90, 40, 20), (40, 40, 40)),
        colors={"red": (200, 50, 60), "green": (40, 130, 70), "blue": (50, 70, 190)},
        ocr_len=(3, 5),
    ),
    "varied": Style(
        font_sizes=(14, 20),
        ocr_font_sizes=(18, 24),
        backgrounds=((255, 255, 255),),
        ink=((0, 0, 0),),
        colors={"red": (255, 0, 0), "green": (0, 170, 0), "blue": (0, 0, 255)},
        ocr_len=(3, 5),
        varied=True,
    ),
}


def _rgb(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def _background(rng: random.Random, style: Style) -> RGB:
    """One of the style's backgrounds, or for a varied style a light one of any hue."""
    if not style.varied:
        return rng.choice(style.backgrounds)
    return _rgb(rng.random(), rng.uniform(0.0, 0.15), rng.uniform(0.85, 1.0))


def _ink(rng: random.Random, style: Style) -> RGB:
    """One of the style's inks, or for a varied style a dark one of any hue."""
    if not style.varied:
        return rng.choice(style.ink)
    return _rgb(rng.random(), rng.uniform(0.0, 0.8), rng.uniform(0.0, 0.4))


def _palette(rng: random.Random, style: Style) -> tuple[RGB, dict[str, RGB]]:
    """A grounding scene's background and colours. A varied style draws a light
    background of any hue and, for each colour, a shade within 18 degrees of its hue, of
    saturation 0.55-1 and value 0.45-1 (the demo's shades lie inside these ranges but for
    its green, 20 degrees from the base green)."""
    background = _background(rng, style)
    if not style.varied:
        return background, style.colors
    colors = {}
    for name, base in style.colors.items():
        hue = colorsys.rgb_to_hsv(*(c / 255 for c in base))[0]
        colors[name] = _rgb(hue + rng.uniform(-0.05, 0.05), rng.uniform(0.55, 1.0), rng.uniform(0.45, 1.0))
    return background, colors


def _font(size: int):  # noqa: ANN202 - PIL's font type
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _word(rng: random.Random, lo: int, hi: int, alphabet: str = ALPHABET) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def ocr_scene(rng: random.Random, style: Style):  # noqa: ANN201
    """An image with one short digit string; returns (image, text, glyph boxes).

    Glyphs sit on a 28-pixel pitch (the area one merged visual token covers in Qwen2-VL)
    with a few pixels of jitter: a tiny model can learn to read it in a CPU-minute budget.
    The glyph boxes (one ``(char, [x1, y1, x2, y2])`` per character) are what the builtin
    models' vision pretraining supervises.
    """
    from PIL import Image, ImageDraw

    img = Image.new("RGB", OCR_SIZE, _background(rng, style))
    draw = ImageDraw.Draw(img)
    text = _word(rng, *style.ocr_len, alphabet=OCR_ALPHABET)
    font = _font(rng.randint(*style.ocr_font_sizes))
    ink = _ink(rng, style)
    pitch = OCR_SIZE[0] // 5
    glyphs: list[tuple[str, list[int]]] = []
    for i, ch in enumerate(text):
        left, t, r, b = (int(v) for v in draw.textbbox((0, 0), ch, font=font))
        x = i * pitch + (pitch - (r - left)) // 2 + rng.randint(-3, 3) - left
        y = (OCR_SIZE[1] - (b - t)) // 2 + rng.randint(-2, 2) - t
        draw.text((x, y), ch, font=font, fill=ink)
        glyphs.append((ch, [x + left, y + t, x + r, y + b]))
    return img, text, glyphs


def ocr_sample(rng: random.Random, style: Style):  # noqa: ANN201
    """An image with one short digit string; returns (image, text)."""
    img, text, _ = ocr_scene(rng, style)
    return img, text


def grounding_scene(rng: random.Random, style: Style, n_words: int | None = None):  # noqa: ANN201
    """An image with 2-3 (or ``n_words``) coloured words in distinct cells of a 2x3 grid;
    returns (image, {colour name: exact pixel box of its word})."""
    from PIL import Image, ImageDraw

    background, colors = _palette(rng, style)
    img = Image.new("RGB", GROUNDING_SIZE, background)
    draw = ImageDraw.Draw(img)
    names = rng.sample(COLOR_NAMES, rng.randint(2, 3) if n_words is None else n_words)
    cols, rows = GRID
    cell_w, cell_h = GROUNDING_SIZE[0] // cols, GROUNDING_SIZE[1] // rows
    cells = rng.sample([(c, r) for c in range(cols) for r in range(rows)], len(names))
    boxes: dict[str, list[int]] = {}
    for name, (c, r) in zip(names, cells, strict=True):
        text = _word(rng, 2, 3)
        font = _font(rng.randint(*style.font_sizes))
        left, t, rr, b = (int(v) for v in draw.textbbox((0, 0), text, font=font))
        w, h = rr - left, b - t
        x = c * cell_w + rng.randint(1, max(1, cell_w - w - 2))
        y = r * cell_h + rng.randint(1, max(1, cell_h - h - 2))
        draw.text((x - left, y - t), text, font=font, fill=colors[name])
        boxes[name] = [x, y, x + w, y + h]
    return img, boxes


def cell_of(box: list[int]) -> list[int]:
    """The box of the table cell (of a ``GRID`` over ``GROUNDING_SIZE``) that holds ``box``."""
    cols, rows = GRID
    cell_w, cell_h = GROUNDING_SIZE[0] // cols, GROUNDING_SIZE[1] // rows
    c = min(cols - 1, int((box[0] + box[2]) / 2) // cell_w)
    r = min(rows - 1, int((box[1] + box[3]) / 2) // cell_h)
    return [c * cell_w, r * cell_h, (c + 1) * cell_w, (r + 1) * cell_h]


def grounding_sample(rng: random.Random, style: Style, boxes: str = "text"):  # noqa: ANN201
    """A grounding scene and one query; returns (image, query, pixel box): the exact box of
    the asked-for word (``boxes="text"``) or of the table cell it sits in (``"cell"``)."""
    if boxes not in ("text", "cell"):
        raise ValueError(f"boxes must be 'text' or 'cell', got {boxes!r}")
    img, words = grounding_scene(rng, style)
    target = rng.choice(sorted(words))
    box = words[target] if boxes == "text" else cell_of(words[target])
    return img, f"the {target} text", box


def write_dataset(
    out: Path,
    *,
    n_train: int = DEMO_TRAIN,
    n_val: int = DEMO_VAL,
    seed: int = 0,
    style: str = "demo",
    ocr_style: str = "pretrain",
    ocr_share: float = DEMO_OCR_SHARE,
    boxes: str = "cell",
    n_retain: int = DEMO_RETAIN,
) -> dict[str, Path]:
    """Write ``train.jsonl``, ``val.jsonl``, ``retain.jsonl`` and their images under ``out``.

    Grounding scenes are drawn in ``style``, their answer the ``boxes`` of the asked-for
    word (``cell``: its table cell, the demo's convention; ``text``: the word itself); OCR
    strips are drawn in ``ocr_style``, ``ocr_share`` of the training split (at least one
    sample of each task) and half the validation split. ``retain.jsonl`` holds
    ``n_retain`` samples in the ``pretrain`` style the builtin models already answer, text
    boxes and half OCR (none when 0): forgetting is measured on it."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "img").mkdir(exist_ok=True)
    paths = {}
    # (split, size, seed offset, OCR share, grounding style, OCR style, grounding boxes)
    splits = [
        ("train", n_train, 0, ocr_share, style, ocr_style, boxes),
        ("val", n_val, 1_000_003, 0.5, style, ocr_style, boxes),
    ]
    if n_retain:
        splits.append(("retain", n_retain, 2_000_003, 0.5, "pretrain", "pretrain", "text"))
    for split, n, offset, share, g_style, o_style, split_boxes in splits:
        rng = random.Random(seed * 7_919 + offset)
        n_ocr = min(n - 1, max(1, round(n * share)))
        lines = []
        for i in range(n):
            name = f"img/{split}-{i:05d}.png"
            if i < n_ocr:
                img, text = ocr_sample(rng, STYLES[o_style])
                rec = {"image": name, "task": "ocr", "text": text}
            else:
                img, query, box = grounding_sample(rng, STYLES[g_style], split_boxes)
                rec = {"image": name, "task": "grounding", "query": query, "box": box}
            img.save(out / name)
            lines.append(json.dumps(rec))
        paths[split] = out / f"{split}.jsonl"
        paths[split].write_text("\n".join(lines) + "\n")
    return paths
