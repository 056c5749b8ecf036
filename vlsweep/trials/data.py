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
    loc: str = ""


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


def _vlsweep_record(obj: Any, base: Path, loc: str) -> tuple[Record | None, list[str]]:
    if not isinstance(obj, dict):
        return None, [f"{loc}: a record must be a JSON object, got {type(obj).__name__}"]
    problems: list[str] = []
    task = obj.get("task")
    if task not in TASKS:
        problems.append(f"{loc}: task must be one of {list(TASKS)}, got {task!r}")
    allowed = {"image", "task", "text", "query", "box", "id"}
    unknown = sorted(set(obj) - allowed)
    if unknown:
        problems.append(f"{loc}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    image = obj.get("image")
    size = None
    if not isinstance(image, str) or not image:
        problems.append(f"{loc}: image must be a path string relative to the file, got {image!r}")
    else:
        size, err = _image_size(base / image)
        if err:
            problems.append(f"{loc}: {err}")
    text = query = None
    box: Box | None = None
    if task == "ocr":
        text = obj.get("text")
        if not isinstance(text, str):
            problems.append(f"{loc}: an ocr record needs text as a string, got {text!r}")
        elif not text.strip():
            problems.append(f"{loc}: text is empty; an ocr record needs the text to read")
    elif task == "grounding":
        query = obj.get("query")
        if not isinstance(query, str) or not query.strip():
            problems.append(f"{loc}: a grounding record needs a non-empty query string, got {query!r}")
        err = _check_box(obj.get("box"), size)
        if err:
            problems.append(f"{loc}: {err}")
        else:
            box = tuple(float(v) for v in obj["box"])  # type: ignore[assignment]
    if problems or size is None or not isinstance(task, str) or not isinstance(image, str):
        return None, problems
    return Record(image=base / image, task=task, size=size, text=text, query=query, box=box, loc=loc), []


def _sharegpt_record(
    obj: Any, base: Path, loc: str, task: str, box_format: str
) -> tuple[Record | None, list[str]]:
    if not isinstance(obj, dict):
        return None, [f"{loc}: a record must be a JSON object, got {type(obj).__name__}"]
    messages, images = obj.get("messages"), obj.get("images")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return None, [f"{loc}: messages must be a list of {{role, content}} objects"]
    if not isinstance(images, list) or len(images) != 1 or not isinstance(images[0], str):
        return None, [f"{loc}: images must be a list with exactly one image path, got {images!r}"]
    users = [m for m in messages if m.get("role") == "user"]
    answers = [m for m in messages if m.get("role") == "assistant"]
    if len(users) != 1 or len(answers) != 1:
        return None, [
            f"{loc}: expected one user and one assistant message, got {len(users)} and {len(answers)}"
        ]
    question, answer = users[0].get("content"), answers[0].get("content")
    problems = []
    if not isinstance(question, str) or "<image>" not in question:
        problems.append(f"{loc}: the user message must be a string containing <image>")
    if not isinstance(answer, str) or not answer.strip():
        problems.append(f"{loc}: the assistant message must be a non-empty string")
    size, err = _image_size(base / images[0])
    if err:
        problems.append(f"{loc}: {err}")
    if problems or size is None:
        return None, problems
    prompt = question.replace("<image>", "").strip()
    if task == "ocr":
        return Record(image=base / images[0], task=task, size=size, text=answer, prompt=prompt, loc=loc), []
    box = CODECS[box_format].decode(answer, size, size)
    if box is None:
        return None, [
            f"{loc}: the assistant answer {answer!r} holds no box in format "
            f"{box_format!r} (set box_format for this file)"
        ]
    err = _check_box(list(box), size)
    if err:
        return None, [f"{loc}: {err}"]
    return Record(
        image=base / images[0], task=task, size=size, query=prompt, box=box, prompt=prompt, loc=loc
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
        loc = f"{path}:{n}" if not label else f"{path}: {label} {n}"
        if format == "sharegpt":
            assert task is not None  # enforced by the config schema
            rec, errs = _sharegpt_record(obj, base, loc, task, box_format)
        else:
            rec, errs = _vlsweep_record(obj, base, loc)
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

    def batch(self, size: int, step: int = 1) -> list[int]:
        """``size`` sample indices; the plain mixer draws alike at every ``step``."""
        return [self._next(self.draw_task()) for _ in range(size)]


def difficulty(records: Sequence[Record]) -> list[float]:
    """How hard each sample is within its task, as its rank in [0, 1] (0 the easiest).

    - ocr: the length of the text to read (more characters, more to get wrong);
    - grounding: how small the box is against the image, 1 - sqrt(box area / image area)
      (a small target is harder to find and to box tightly).

    Tied samples share the mean of their ranks (nothing orders them), so data whose boxes
    are all one size (table cells, say) has one grounding difficulty, 0.5, and the
    strategies that read it treat every such sample alike; a task of one sample has
    difficulty 0.
    """
    raw: list[float] = []
    for r in records:
        if r.task == "grounding" and r.box is not None:
            area = max(r.box[2] - r.box[0], 0.0) * max(r.box[3] - r.box[1], 0.0)
            raw.append(1.0 - math.sqrt(area / max(r.size[0] * r.size[1], 1)))
        else:
            raw.append(float(len(r.text or "")))
    out = [0.0] * len(records)
    by_task: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_task.setdefault(r.task, []).append(i)
    for idx in by_task.values():
        if len(idx) < 2:
            continue
        ranked = sorted(idx, key=lambda i: raw[i])
        start = 0
        while start < len(ranked):  # one run of tied values at a time
            end = start
            while end + 1 < len(ranked) and raw[ranked[end + 1]] == raw[ranked[start]]:
                end += 1
            for i in ranked[start : end + 1]:
                out[i] = (start + end) / 2 / (len(ranked) - 1)
            start = end + 1
    return out


# The share of each task's samples a curriculum starts with (Platanios et al. 2019's c0).
CURRICULUM_START = 0.25


def competence(step: int, ramp_steps: int) -> float:
    """The curriculum's pool at ``step``: samples with difficulty <= this are drawn. The
    square-root schedule of Platanios et al. (2019), from CURRICULUM_START to 1 at
    ``ramp_steps``; 1 throughout when ``ramp_steps`` is 0 (no curriculum)."""
    if ramp_steps <= 0 or step >= ramp_steps:
        return 1.0
    c0 = CURRICULUM_START
    return min(1.0, math.sqrt(step * (1 - c0 * c0) / ramp_steps + c0 * c0))


def rotation_probabilities(base: dict[str, float], step: int, period: int, share: float) -> dict[str, float]:
    """Task probabilities at ``step`` under task rotation: in phase k (``period`` steps
    each, from step 1) the k-th task in turn takes ``share`` of the batch and the others
    split the rest in their base proportions. ``period`` 0: ``base`` unchanged."""
    if period <= 0 or len(base) < 2:
        return base
    names = sorted(base)
    dominant = names[((step - 1) // period) % len(names)]
    rest = sum(p for t, p in base.items() if t != dominant)
    return {t: share if t == dominant else (1 - share) * p / rest for t, p in base.items()}


class StrategyMixer(TaskMixer):
    """TaskMixer with the data strategies: hard-sample oversampling, a curriculum and task
    rotation (vlsweep.params: hard_oversample, curriculum_ratio, rotation_period/share).

    Within a task a sample is drawn with replacement, with weight ``hard_oversample`` for a
    hard grounding sample (difficulty >= 0.5) and 1 otherwise, among the samples the
    curriculum admits at this step. ``batch(size, step)`` draws for a given step."""

    def __init__(
        self,
        records: Sequence[Record],
        temperature: float,
        seed: int,
        *,
        steps: int,
        hard_oversample: float = 1.0,
        curriculum_ratio: float = 0.0,
        rotation_period: int = 0,
        rotation_share: float = 0.8,
    ):
        super().__init__([r.task for r in records], temperature, seed)
        self.difficulty = difficulty(records)
        self.weight = [
            hard_oversample if r.task == "grounding" and d >= 0.5 else 1.0
            for r, d in zip(records, self.difficulty, strict=True)
        ]
        self.ramp_steps = round(curriculum_ratio * steps)
        self.period, self.share = rotation_period, rotation_share

    def pool(self, task: str, step: int) -> list[int]:
        """The samples of ``task`` the curriculum admits at ``step`` (never none: the
        easiest ones at least, all of them when they tie)."""
        c = competence(step, self.ramp_steps)
        ix = self._by_task[task]
        admitted = [i for i in ix if self.difficulty[i] <= c]
        if admitted:
            return admitted
        easiest = min(self.difficulty[i] for i in ix)
        return [i for i in ix if self.difficulty[i] == easiest]

    def probabilities_at(self, step: int) -> dict[str, float]:
        return rotation_probabilities(self.probabilities, step, self.period, self.share)

    def batch(self, size: int, step: int = 1) -> list[int]:
        probs = self.probabilities_at(step)
        names = list(probs)
        tasks = self._rng.choices(names, weights=[probs[t] for t in names], k=size)
        out = []
        for task in tasks:
            pool = self.pool(task, step)
            out.append(self._rng.choices(pool, weights=[self.weight[i] for i in pool])[0])
        return out


def make_mixer(records: Sequence[Record], params: Any, steps: int, seed: int) -> TaskMixer:
    """The trial's sampler: a plain TaskMixer unless a data strategy is on (so that trials
    without one draw exactly the batches they always drew)."""
    on = params.hard_oversample != 1.0 or params.curriculum_ratio > 0 or params.rotation_period > 0
    if not on:
        return TaskMixer([r.task for r in records], params.mix_temperature, seed)
    return StrategyMixer(
        records,
        params.mix_temperature,
        seed,
        steps=steps,
        hard_oversample=params.hard_oversample,
        curriculum_ratio=params.curriculum_ratio,
        rotation_period=params.rotation_period,
        rotation_share=params.rotation_share,
    )
