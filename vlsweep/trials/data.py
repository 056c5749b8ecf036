"""Datasets: loading, whole-file validation, and temperature-based task mixing.

Two input formats:

- vlsweep JSONL (README.md, "Your own model and data"), one record per line, image paths
  relative to the file::

    {"image": "img/0001.png", "task": "ocr", "text": "INVOICE 2024-11"}
    {"image": "img/0002.png", "task": "grounding", "query": "the total", "box": [x1, y1, x2, y2]}

- LLaMA-Factory's sharegpt multimodal records (``messages`` + ``images``), one task per
  file; for grounding, the assistant answer holds the box in the file's ``box_format``.

Every record is checked before training and all problems are reported at once as
``file:line: problem``.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlsweep.params import TASKS
from vlsweep.trials.codecs import CODECS, Box


@dataclass(frozen=True)
class Record:
    """One validated sample. ``box`` is in pixels of the original image."""

    image: Path
    task: str
    size: tuple[int, int]
    text: str | None = None
    query: str | None = None
    box: Box | None = None
    # A sharegpt record carries its own question; vlsweep records use the task's template.
    prompt: str | None = None
    where: str = ""


class DataError(ValueError):
    """Problems found in dataset files, one ``file:line: problem`` line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _image_size(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        return None, f"image {path} does not exist"
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            return im.size, None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        return None, f"image {path} cannot be read ({type(exc).__name__}: {exc})"


def _check_box(box: Any, size: tuple[int, int] | None) -> str | None:
    if not (
        isinstance(box, list)
        and len(box) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
    ):
        return f"box must be a list of 4 numbers [x1, y1, x2, y2] in pixels, got {box!r}"
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
        return f"box must be finite, got {box!r}"
    if x2 <= x1 or y2 <= y1:
        return f"box must have x2 > x1 and y2 > y1, got {box!r}"
    if size is not None:
        w, h = size
        if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
            return f"box {box!r} lies outside the {w}x{h} image"
    return None


def _vlsweep_record(obj: Any, base: Path, where: str) -> tuple[Record | None, list[str]]:
    if not isinstance(obj, dict):
        return None, [f"{where}: a record must be a JSON object, got {type(obj).__name__}"]
    problems: list[str] = []
    task = obj.get("task")
    if task not in TASKS:
        problems.append(f"{where}: task must be one of {list(TASKS)}, got {task!r}")
    allowed = {"image", "task", "text", "query", "box", "id"}
    unknown = sorted(set(obj) - allowed)
    if unknown:
        problems.append(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    image = obj.get("image")
    size = None
    if not isinstance(image, str) or not image:
        problems.append(f"{where}: image must be a path string relative to the file, got {image!r}")
    else:
        size, err = _image_size(base / image)
        if err:
            problems.append(f"{where}: {err}")
    text = query = None
    box: Box | None = None
    if task == "ocr":
        text = obj.get("text")
        if not isinstance(text, str):
            problems.append(f"{where}: an ocr record needs text as a string, got {text!r}")
        elif not text.strip():
            problems.append(f"{where}: text is empty; an ocr record needs the text to read")
    elif task == "grounding":
        query = obj.get("query")
        if not isinstance(query, str) or not query.strip():
            problems.append(f"{where}: a grounding record needs a non-empty query string, got {query!r}")
        err = _check_box(obj.get("box"), size)
        if err:
            problems.append(f"{where}: {err}")
        else:
            box = tuple(float(v) for v in obj["box"])  # type: ignore[assignment]
    if problems or size is None or not isinstance(task, str) or not isinstance(image, str):
        return None, problems
    return Record(image=base / image, task=task, size=size, text=text, query=query, box=box, where=where), []


def _sharegpt_record(
    obj: Any, base: Path, where: str, task: str, box_format: str
) -> tuple[Record | None, list[str]]:
    if not isinstance(obj, dict):
        return None, [f"{where}: a record must be a JSON object, got {type(obj).__name__}"]
    messages, images = obj.get("messages"), obj.get("images")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return None, [f"{where}: messages must be a list of {{role, content}} objects"]
    if not isinstance(images, list) or len(images) != 1 or not isinstance(images[0], str):
        return None, [f"{where}: images must be a list with exactly one image path, got {images!r}"]
    users = [m for m in messages if m.get("role") == "user"]
    answers = [m for m in messages if m.get("role") == "assistant"]
    if len(users) != 1 or len(answers) != 1:
        return None, [
            f"{where}: expected one user and one assistant message, got {len(users)} and {len(answers)}"
        ]
    question, answer = users[0].get("content"), answers[0].get("content")
    problems = []
    if not isinstance(question, str) or "<image>" not in question:
        problems.append(f"{where}: the user message must be a string containing <image>")
    if not isinstance(answer, str) or not answer.strip():
        problems.append(f"{where}: the assistant message must be a non-empty string")
    size, err = _image_size(base / images[0])
    if err:
        problems.append(f"{where}: {err}")
    if problems or size is None:
        return None, problems
    prompt = question.replace("<image>", "").strip()
    if task == "ocr":
        return Record(
            image=base / images[0], task=task, size=size, text=answer, prompt=prompt, where=where
        ), []
    box = CODECS[box_format].decode(answer, size, size)
    if box is None:
        return None, [
            f"{where}: the assistant answer {answer!r} holds no box in format "
            f"{box_format!r} (set box_format for this file)"
        ]
    err = _check_box(list(box), size)
    if err:
        return None, [f"{where}: {err}"]
    return Record(
        image=base / images[0], task=task, size=size, query=prompt, box=box, prompt=prompt, where=where
    ), []


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                yield lineno, line


def load_records(
    path: Path, *, format: str = "vlsweep", task: str | None = None, box_format: str = "pixels"
) -> tuple[list[Record], list[str]]:
    """Read one dataset file; returns the valid records and every problem found."""
    if not path.is_file():
        return [], [f"{path}: dataset file does not exist"]
    records: list[Record] = []
    problems: list[str] = []
    base = path.parent
    if format == "sharegpt" and path.suffix == ".json":
        # LLaMA-Factory also keeps sharegpt data as one JSON list.
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            return [], [f"{path}:{exc.lineno}: not valid JSON: {exc.msg}"]
        if not isinstance(items, list):
            return [], [f"{path}: a sharegpt .json file must hold a list of records"]
        numbered = [(i + 1, item) for i, item in enumerate(items)]
        label = "record"
    else:
        numbered = []
        for lineno, line in _lines(path):
            try:
                numbered.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                problems.append(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})")
        label = ""
    for n, obj in numbered:
        where = f"{path}:{n}" if not label else f"{path}: {label} {n}"
        if format == "sharegpt":
            assert task is not None  # enforced by the config schema
            rec, errs = _sharegpt_record(obj, base, where, task, box_format)
        else:
            rec, errs = _vlsweep_record(obj, base, where)
        problems.extend(errs)
        if rec is not None:
            records.append(rec)
    if not numbered and not problems:
        problems.append(f"{path}: the file holds no records")
    return records, problems


def check_tasks(records: Sequence[Record], label: str, tasks: Sequence[str] = TASKS) -> list[str]:
    """A split must hold samples of every task the loss is weighted over."""
    counts = Counter(r.task for r in records)
    return [
        f"{label}: no samples of task {t!r}; every task needs training and validation samples"
        for t in tasks
        if counts[t] == 0
    ]


def task_probabilities(counts: dict[str, int], temperature: float) -> dict[str, float]:
    """Sampling probability of each task, p_i proportional to n_i ** (1 / T).

    T = 1 samples in proportion to the data, T = 2 by the square root, large T uniformly.
    """
    if temperature <= 0:
        raise ValueError(f"mix_temperature must be > 0, got {temperature}")
    weights = {t: n ** (1.0 / temperature) for t, n in counts.items() if n > 0}
    total = sum(weights.values())
    return {t: w / total for t, w in weights.items()}


class TaskMixer:
    """Draws batches of sample indices: the task by its mixing probability, then the next
    sample of that task from its own reshuffled-every-epoch order. Deterministic by seed."""

    def __init__(self, tasks: Sequence[str], temperature: float, seed: int):
        self._by_task: dict[str, list[int]] = {}
        for i, task in enumerate(tasks):
            self._by_task.setdefault(task, []).append(i)
        self.probabilities = task_probabilities({t: len(ix) for t, ix in self._by_task.items()}, temperature)
        self._names = list(self.probabilities)
        self._cum = list(self.probabilities.values())
        self._rng = random.Random(seed)
        self._orders: dict[str, list[int]] = {t: [] for t in self._names}

    def draw_task(self) -> str:
        return self._rng.choices(self._names, weights=self._cum)[0]

    def _next(self, task: str) -> int:
        order = self._orders[task]
        if not order:
            order.extend(self._by_task[task])
            self._rng.shuffle(order)
        return order.pop()

    def batch(self, size: int) -> list[int]:
        return [self._next(self.draw_task()) for _ in range(size)]
