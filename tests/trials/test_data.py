from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from vlsweep.demo.synth import STYLES, grounding_scene, write_dataset
from vlsweep.trials.data import TaskMixer, load_records, task_probabilities


@pytest.mark.parametrize("temperature", [1.0, 2.0, 100.0])
def test_sampled_task_frequencies_follow_n_to_the_one_over_t(temperature):
    counts = {"ocr": 900, "grounding": 100}
    tasks = ["ocr"] * counts["ocr"] + ["grounding"] * counts["grounding"]
    mixer = TaskMixer(tasks, temperature, seed=0)
    drawn = Counter(tasks[i] for i in mixer.batch(10_000))
    expected = {t: n ** (1 / temperature) for t, n in counts.items()}
    total = sum(expected.values())
    for task in counts:
        assert drawn[task] / 10_000 == pytest.approx(expected[task] / total, abs=0.02)


def test_temperature_limits():
    assert task_probabilities({"a": 900, "b": 100}, 1.0) == pytest.approx({"a": 0.9, "b": 0.1})
    assert task_probabilities({"a": 900, "b": 100}, 2.0) == pytest.approx({"a": 0.75, "b": 0.25})
    probs = task_probabilities({"a": 900, "b": 100}, 1e6)
    assert probs["a"] == pytest.approx(0.5, abs=1e-4)


def test_mixer_cycles_through_every_sample_of_a_task():
    tasks = ["ocr"] * 5
    mixer = TaskMixer(tasks, 1.0, seed=1)
    assert sorted(mixer.batch(5)) == [0, 1, 2, 3, 4]


def test_demo_dataset_is_deterministic_by_seed(tmp_path: Path):
    a = write_dataset(tmp_path / "a", n_train=6, n_val=2, seed=7)
    b = write_dataset(tmp_path / "b", n_train=6, n_val=2, seed=7)
    c = write_dataset(tmp_path / "c", n_train=6, n_val=2, seed=8)
    assert a["train"].read_text() == b["train"].read_text()
    assert a["train"].read_text() != c["train"].read_text()
    for name in ("train-00000.png", "train-00005.png"):
        assert (tmp_path / "a/img" / name).read_bytes() == (tmp_path / "b/img" / name).read_bytes()
    records, problems = load_records(a["train"])
    assert not problems and len(records) == 6
    assert {r.task for r in records} == {"ocr", "grounding"}


@pytest.mark.parametrize("n_words", [None, 1, 3])
def test_grounding_scene_words_sit_in_distinct_cells_inside_the_image(n_words):
    rng = random.Random(3)
    for _ in range(20):
        img, boxes = grounding_scene(rng, STYLES["demo"], n_words)
        assert len(boxes) == n_words if n_words else 2 <= len(boxes) <= 3
        cells = {(b[0] * 2 // img.width, b[1] * 3 // img.height) for b in boxes.values()}
        assert len(cells) == len(boxes)
        for x1, y1, x2, y2 in boxes.values():
            assert 0 <= x1 < x2 <= img.width and 0 <= y1 < y2 <= img.height


def test_the_demo_dataset_boxes_table_cells_and_replays_a_tenth_of_plain_ocr(tmp_path: Path):
    """The demo's fine-tune (docs/demo.md): grounding answers are the box of the table cell
    holding the asked-for word, training holds a tenth OCR, validation half; the retention
    split keeps the base's own task (text boxes, pretraining style)."""
    from PIL import Image

    from vlsweep.demo.synth import GRID, GROUNDING_SIZE, cell_of

    paths = write_dataset(tmp_path, n_train=40, n_val=20, n_retain=10, seed=1)
    recs = {split: [json.loads(x) for x in paths[split].read_text().splitlines()] for split in paths}
    assert Counter(r["task"] for r in recs["train"]) == {"ocr": 4, "grounding": 36}
    assert Counter(r["task"] for r in recs["val"]) == {"ocr": 10, "grounding": 10}
    cell_w, cell_h = GROUNDING_SIZE[0] // GRID[0], GROUNDING_SIZE[1] // GRID[1]
    for r in recs["train"] + recs["val"]:
        if r["task"] == "grounding":
            x1, y1, x2, y2 = r["box"]
            assert (x2 - x1, y2 - y1) == (cell_w, cell_h) and x1 % cell_w == 0 and y1 % cell_h == 0, r
        else:  # plain print: black digits on white
            with Image.open(tmp_path / r["image"]) as im:
                assert im.convert("RGB").getpixel((0, 0)) == (255, 255, 255)
    assert all(r["box"][2] - r["box"][0] < cell_w for r in recs["retain"] if r["task"] == "grounding")
    # A word's cell is the cell its centre lies in, the edges included.
    assert cell_of([3, 30, 20, 40]) == [0, 28, 56, 56]
    assert cell_of([60, 70, 111, 84]) == [56, 56, 112, 84]
    # The earlier demo's data (text boxes, one style, half OCR) is one call away.
    old = write_dataset(
        tmp_path / "old", n_train=10, n_val=4, n_retain=0, boxes="text", ocr_style="demo", ocr_share=0.5
    )
    assert Counter(json.loads(x)["task"] for x in old["train"].read_text().splitlines()) == {
        "ocr": 5,
        "grounding": 5,
    }


def _write(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_every_bad_record_is_reported_with_its_line(demo_data: Path, tmp_path: Path):
    img = str(demo_data / "img" / "train-00000.png")
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    bad = _write(
        tmp_path / "bad.jsonl",
        [
            {"image": img, "task": "ocr", "text": "OK"},
            {"image": "missing.png", "task": "ocr", "text": "X"},
            {"image": "corrupt.png", "task": "ocr", "text": "X"},
            {"image": img, "task": "grounding", "query": "q", "box": [0, 0, 9999, 10]},
            {"image": img, "task": "grounding", "query": "q", "box": [10, 10, 5, 20]},
            {"image": img, "task": "ocr", "text": ""},
            {"image": img, "task": "caption", "text": "x"},
            '{"image": "a.png", "task": ',
            {"image": img, "task": "grounding", "query": "q", "box": "0,0,1,1"},
        ],
    )
    records, problems = load_records(bad)
    assert len(records) == 1
    text = "\n".join(problems)
    for line, needle in [
        (2, "does not exist"),
        (3, "cannot be read"),
        (4, "outside"),
        (5, "x2 > x1"),
        (6, "text is empty"),
        (7, "task must be one of"),
        (8, "not valid JSON"),
        (9, "list of 4 numbers"),
    ]:
        assert f"{bad}:{line}: " in text and needle in text, (line, needle, text)
    assert len(problems) == 8


def test_sharegpt_records_load_with_the_file_task(demo_data: Path, tmp_path: Path):
    img = str(demo_data / "img" / "train-00000.png")
    ocr = _write(
        tmp_path / "ocr.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "<image>Read it."},
                    {"role": "assistant", "content": "HELLO"},
                ],
                "images": [img],
            },
        ],
    )
    grd = _write(
        tmp_path / "grd.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "<image>Where is the logo?"},
                    {"role": "assistant", "content": "[2, 3, 20, 15]"},
                ],
                "images": [img],
            },
            {
                "messages": [
                    {"role": "user", "content": "<image>Where?"},
                    {"role": "assistant", "content": "somewhere"},
                ],
                "images": [img],
            },
        ],
    )
    recs, problems = load_records(ocr, format="sharegpt", task="ocr")
    assert not problems and recs[0].text == "HELLO" and recs[0].prompt == "Read it."
    recs, problems = load_records(grd, format="sharegpt", task="grounding", box_format="pixels")
    assert recs[0].box == (2.0, 3.0, 20.0, 15.0) and recs[0].query == "Where is the logo?"
    assert len(problems) == 1 and f"{grd}:2:" in problems[0] and "holds no box" in problems[0]
