"""Box codecs: a box in original-image pixels <-> the answer text a model family emits.

Each codec has ``encode(box, size, resized) -> str`` and ``decode(text, size, resized)
-> box | None``; ``size`` is the original (width, height), ``resized`` the size the
processor fed the vision tower (only Qwen2.5-VL answers in those pixels). ``decode``
returns None for an answer that does not parse: the caller scores it IoU 0 and counts it
in ``parse_fail_rate``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from vlsweep.metrics import Box

Size = tuple[int, int]

_INT = r"\s*(-?\d+(?:\.\d+)?)\s*"


def _to_bins(box: Box, size: Size, bins: int) -> list[int]:
    w, h = size
    x1, y1, x2, y2 = box
    scale = [w, h, w, h]
    return [min(bins - 1, max(0, int(v / s * bins))) for v, s in zip((x1, y1, x2, y2), scale, strict=True)]


def _from_bins(values: list[float], size: Size, bins: int) -> Box:
    # Each bin stands for its centre, so a round trip moves a coordinate by < 1 bin.
    w, h = size
    x1, y1, x2, y2 = ((v + 0.5) / bins * s for v, s in zip(values, (w, h, w, h), strict=True))
    return (x1, y1, x2, y2)


def _valid(box: Box) -> Box | None:
    x1, y1, x2, y2 = box
    return box if x2 > x1 and y2 > y1 else None


@dataclass(frozen=True)
class BoxCodec:
    name: str
    encode: Callable[[Box, Size, Size], str]
    decode: Callable[[str, Size, Size], Box | None]


# Qwen2-VL: <|box_start|>(x1,y1),(x2,y2)<|box_end|>, integers normalised to 0-1000.
_QWEN2_RX = re.compile(rf"\({_INT},{_INT}\)\s*,\s*\({_INT},{_INT}\)")


def _qwen2_encode(box: Box, size: Size, resized: Size) -> str:
    x1, y1, x2, y2 = _to_bins(box, size, 1000)
    return f"<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"


def _qwen2_decode(text: str, size: Size, resized: Size) -> Box | None:
    m = _QWEN2_RX.search(text)
    if not m:
        return None
    return _valid(_from_bins([float(g) for g in m.groups()], size, 1000))


def _json_bbox(text: str) -> list[float] | None:
    m = re.search(r"\"bbox_2d\"\s*:\s*\[([^\]]*)\]", text)
    if not m:
        return None
    try:
        values = json.loads(f"[{m.group(1)}]")
    except json.JSONDecodeError:
        return None
    if len(values) != 4 or not all(isinstance(v, (int, float)) for v in values):
        return None
    return [float(v) for v in values]


# Qwen2.5-VL: JSON {"bbox_2d": [x1, y1, x2, y2]} in absolute pixels of the resized image.
def _qwen25_encode(box: Box, size: Size, resized: Size) -> str:
    sx, sy = resized[0] / size[0], resized[1] / size[1]
    x1, y1, x2, y2 = box
    vals = [round(x1 * sx), round(y1 * sy), round(x2 * sx), round(y2 * sy)]
    return json.dumps({"bbox_2d": vals}, separators=(",", ":"))


def _qwen25_decode(text: str, size: Size, resized: Size) -> Box | None:
    v = _json_bbox(text)
    if v is None:
        return None
    sx, sy = size[0] / resized[0], size[1] / resized[1]
    return _valid((v[0] * sx, v[1] * sy, v[2] * sx, v[3] * sy))


# Qwen3-VL: the same JSON shape, coordinates relative on 0-1000.
def _qwen3_encode(box: Box, size: Size, resized: Size) -> str:
    return json.dumps({"bbox_2d": _to_bins(box, size, 1000)}, separators=(",", ":"))


def _qwen3_decode(text: str, size: Size, resized: Size) -> Box | None:
    v = _json_bbox(text)
    return None if v is None else _valid(_from_bins(v, size, 1000))


# PaliGemma: <locYYYY><locXXXX><locYYYY><locXXXX>, y first, 1024 bins.
_PALI_RX = re.compile(r"<loc(\d{4})>\s*<loc(\d{4})>\s*<loc(\d{4})>\s*<loc(\d{4})>")


def _pali_encode(box: Box, size: Size, resized: Size) -> str:
    x1, y1, x2, y2 = _to_bins(box, size, 1024)
    return f"<loc{y1:04d}><loc{x1:04d}><loc{y2:04d}><loc{x2:04d}>"


def _pali_decode(text: str, size: Size, resized: Size) -> Box | None:
    m = _PALI_RX.search(text)
    if not m:
        return None
    y1, x1, y2, x2 = (float(g) for g in m.groups())
    if max(y1, x1, y2, x2) > 1023:
        return None
    return _valid(_from_bins([x1, y1, x2, y2], size, 1024))


# Florence-2: <loc_N> x1 y1 x2 y2, 1000 bins.
_FLORENCE_RX = re.compile(r"<loc_(\d+)>\s*<loc_(\d+)>\s*<loc_(\d+)>\s*<loc_(\d+)>")


def _florence_encode(box: Box, size: Size, resized: Size) -> str:
    return "".join(f"<loc_{v}>" for v in _to_bins(box, size, 1000))


def _florence_decode(text: str, size: Size, resized: Size) -> Box | None:
    m = _FLORENCE_RX.search(text)
    if not m:
        return None
    v = [float(g) for g in m.groups()]
    return None if max(v) > 999 else _valid(_from_bins(v, size, 1000))


# InternVL: <box>[[x1, y1, x2, y2]]</box>, 0-1000.
_INTERN_RX = re.compile(rf"<box>\s*\[\[{_INT},{_INT},{_INT},{_INT}\]\]\s*</box>")


def _intern_encode(box: Box, size: Size, resized: Size) -> str:
    x1, y1, x2, y2 = _to_bins(box, size, 1000)
    return f"<box>[[{x1}, {y1}, {x2}, {y2}]]</box>"


def _intern_decode(text: str, size: Size, resized: Size) -> Box | None:
    m = _INTERN_RX.search(text)
    return None if not m else _valid(_from_bins([float(g) for g in m.groups()], size, 1000))


# Generic (LLaVA, Idefics3, SmolVLM, Gemma3 and unknown families): [x1,y1,x2,y2] on 0-1000.
_GENERIC_RX = re.compile(rf"\[{_INT},{_INT},{_INT},{_INT}\]")


def _generic_encode(box: Box, size: Size, resized: Size) -> str:
    x1, y1, x2, y2 = _to_bins(box, size, 1000)
    return f"[{x1},{y1},{x2},{y2}]"


def _generic_decode(text: str, size: Size, resized: Size) -> Box | None:
    m = _GENERIC_RX.search(text)
    return None if not m else _valid(_from_bins([float(g) for g in m.groups()], size, 1000))


# Plain absolute pixels [x1, y1, x2, y2]: only for reading user data (sharegpt answers).
def _pixels_encode(box: Box, size: Size, resized: Size) -> str:
    return "[" + ",".join(str(round(v)) for v in box) + "]"


def _pixels_decode(text: str, size: Size, resized: Size) -> Box | None:
    m = _GENERIC_RX.search(text)
    return None if not m else _valid(tuple(float(g) for g in m.groups()))  # type: ignore[arg-type]


CODECS: dict[str, BoxCodec] = {
    c.name: c
    for c in [
        BoxCodec("qwen2_vl", _qwen2_encode, _qwen2_decode),
        BoxCodec("qwen2_5_vl", _qwen25_encode, _qwen25_decode),
        BoxCodec("qwen3_vl", _qwen3_encode, _qwen3_decode),
        BoxCodec("paligemma", _pali_encode, _pali_decode),
        BoxCodec("florence2", _florence_encode, _florence_decode),
        BoxCodec("internvl", _intern_encode, _intern_decode),
        BoxCodec("generic", _generic_encode, _generic_decode),
        BoxCodec("pixels", _pixels_encode, _pixels_decode),
    ]
}
