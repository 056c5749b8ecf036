"""The "Will it fit" examples of docs/cluster.md: the estimate ``vlsweep validate`` prints
for the sweep configs in examples/fit/ (Qwen2-VL 2B on half an 80 GB GPU, 7B on one
80 GB GPU and with QLoRA on a 24 GB one, 72B with QLoRA on one 80 GB GPU).

The configs name the Hub checkpoints (``Qwen/Qwen2-VL-7B-Instruct``), which cannot be
downloaded here, so each runs against a stand-in directory: the checkpoint's published
architecture (``config.json``: widths, depths, heads, vocabulary, the shared 675M vision
encoder) with no weights, and the builtin tiny Qwen2-VL's processor with the image
settings of Qwen2-VL's own (14-pixel patches, 2x2 merge, up to 12.8 megapixels). The
estimate needs nothing else: the model is built without weights. Its one stand-in is the
tokenizer, a character-level one, which counts the text of a sample in more tokens than
Qwen's BPE would: the estimate is high by those. The data: a few document pages of
1024x1024 pixels (resized to 1036x1036, multiples of 28: 1,369 image tokens each) with
OCR answers of about 200 characters.

Usage::

    python benchmarks/fit_examples.py [--json docs/benchmarks/fit_examples.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "fit"
TINY = ROOT / "vlsweep" / "demo" / "weights" / "tiny-qwen2-vl"
# Published Qwen2-VL architectures (the checkpoints' config.json); the vision encoder is the
# same 675M-parameter one in all three, its merger widening to the language model's width.
ARCHITECTURES = {
    "Qwen/Qwen2-VL-2B-Instruct": {
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "Qwen/Qwen2-VL-7B-Instruct": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
    },
    "Qwen/Qwen2-VL-72B-Instruct": {
        "hidden_size": 8192,
        "intermediate_size": 29568,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
    },
}
VISION = {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "patch_size": 14}
PAGE = 1024
# What runs, in the docs' order: (label, example file, changes to its sections, the exit
# code vlsweep validate must give: 0 fits, 2 refused). Also shown: the 7B bfloat16 example
# on a GPU it was not written for, and at the default eval_batch_size.
RUNS: list[tuple[str, str, dict[str, Any], int]] = [
    ("qwen2-vl-2b-half-gpu.yaml", "qwen2-vl-2b-half-gpu.yaml", {}, 0),
    ("qwen2-vl-7b-80gb.yaml", "qwen2-vl-7b-80gb.yaml", {}, 0),
    (
        "qwen2-vl-7b-80gb.yaml on a 24 GB GPU",
        "qwen2-vl-7b-80gb.yaml",
        {"resources": {"gpu_memory_gb": 24}},
        2,
    ),
    (
        "qwen2-vl-7b-80gb.yaml with the default eval_batch_size of 32",
        "qwen2-vl-7b-80gb.yaml",
        {"budget": {"eval_batch_size": 32}},
        0,
    ),
    ("qwen2-vl-7b-qlora-24gb.yaml", "qwen2-vl-7b-qlora-24gb.yaml", {}, 0),
    ("qwen2-vl-72b-qlora-80gb.yaml", "qwen2-vl-72b-qlora-80gb.yaml", {}, 0),
    # Trials larger than one GPU (docs/cluster.md renders these two in that section).
    ("qwen2-vl-7b-2gpu-ddp.yaml", "qwen2-vl-7b-2gpu-ddp.yaml", {}, 0),
    ("qwen2-vl-72b-4x80gb-fsdp.yaml", "qwen2-vl-72b-4x80gb-fsdp.yaml", {}, 0),
]
# The runs docs/cluster.md shows under "Trials larger than one GPU" (doc_block_multi).
MULTI_WORKER = ("qwen2-vl-7b-2gpu-ddp.yaml", "qwen2-vl-72b-4x80gb-fsdp.yaml")
ANSWER = "INVOICE 2024-11 " * 12  # about 200 characters of OCR answer


def stand_in(hub_id: str, into: Path) -> Path:
    """A checkpoint directory with ``hub_id``'s architecture and no weights."""
    from transformers import Qwen2VLConfig

    arch = ARCHITECTURES[hub_id]
    text = {
        **arch,
        "max_position_embeddings": 32768,
        "rope_parameters": {"mrope_section": [16, 24, 24], "rope_theta": 1000000.0, "rope_type": "default"},
    }
    tiny = json.loads((TINY / "config.json").read_text())
    config = Qwen2VLConfig(
        text_config=text,
        vision_config={**VISION, "hidden_size": arch["hidden_size"], "in_channels": 3},
        image_token_id=tiny["image_token_id"],
        video_token_id=tiny["video_token_id"],
        tie_word_embeddings=arch["tie_word_embeddings"],
    )
    out = into / hub_id.split("/")[1]
    out.mkdir(parents=True)
    config.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(TINY / name, out / name)
    processor = json.loads((TINY / "processor_config.json").read_text())
    for part in ("image_processor", "video_processor"):
        processor[part]["size"] = {"longest_edge": 12845056, "shortest_edge": 3136}
    (out / "processor_config.json").write_text(json.dumps(processor, indent=2))
    return out


def pages(into: Path) -> Path:
    """Four 1024x1024 document pages: two OCR samples, two grounding ones."""
    from PIL import Image

    data = into / "data"
    (data / "img").mkdir(parents=True)
    rows = []
    for i in range(4):
        Image.new("RGB", (PAGE, PAGE), "white").save(data / "img" / f"{i}.png")
        if i % 2:
            rows.append(
                {"image": f"img/{i}.png", "task": "grounding", "query": "the total", "box": [10, 10, 90, 40]}
            )
        else:
            rows.append({"image": f"img/{i}.png", "task": "ocr", "text": ANSWER})
    for split in ("train", "val"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def run(
    example: Path, tmp: Path, checkpoints: dict[str, Path], data: Path, changes: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``vlsweep validate`` of the example (with ``changes`` to its sections), run against
    the stand-in: what it prints."""
    from typer.testing import CliRunner

    from vlsweep.cli import app

    raw = yaml.safe_load(example.read_text())
    for section, keys in (changes or {}).items():
        raw[section].update(keys)
    hub_id = raw["model"]["name_or_path"]
    raw["model"]["name_or_path"] = str(checkpoints[hub_id])
    raw["data"] = {"train": str(data / "train.jsonl"), "val": str(data / "val.jsonl")}
    path = tmp / example.name
    path.write_text(yaml.safe_dump(raw))
    t0 = time.perf_counter()
    result = CliRunner().invoke(app, ["validate", str(path)])
    seconds = time.perf_counter() - t0
    lines = [
        line.replace(str(path), f"examples/fit/{example.name}")
        for line in result.output.splitlines()
        if not line.startswith(("Loading", "[transformers]")) and "Warning" not in line and line.strip()
    ]
    label = example.name + (f" with {json.dumps(changes)}" if changes else "")
    print(f"{label} ({seconds:.0f} s, exit {result.exit_code}):\n  " + "\n  ".join(lines))
    return {"model": hub_id, "exit_code": result.exit_code, "output": lines, "seconds": round(seconds, 1)}


def doc_block(data: dict[str, Any]) -> str:
    """What docs/cluster.md shows in "Will it fit" (benchmarks/doc_tables.py): each
    one-GPU example's printout."""
    return _blocks({k: v for k, v in data["examples"].items() if k not in MULTI_WORKER})


def doc_block_multi(data: dict[str, Any]) -> str:
    """The multi-worker examples' printouts, for "Trials larger than one GPU"."""
    return _blocks({k: v for k, v in data["examples"].items() if k in MULTI_WORKER})


def _blocks(examples: dict[str, Any]) -> str:
    blocks = []
    for name, r in examples.items():
        shown = [line for line in r["output"] if not line.startswith("ok:")]
        file, _, rest = name.partition(" ")
        title = f"`examples/fit/{file}` {rest}".rstrip()
        blocks.append(f"{title} ({r['model']}):\n\n```\n" + "\n".join(shown) + "\n```")
    return "\n\n".join(blocks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--only", action="append", help="only these runs (labels of RUNS)")
    args = ap.parse_args()
    unlisted = {e.name for e in EXAMPLES.glob("*.yaml")} - {file for _, file, _, _ in RUNS}
    if unlisted:
        raise SystemExit(f"error: examples/fit/ holds {sorted(unlisted)}, not in RUNS; add them")
    runs = [r for r in RUNS if not args.only or r[0] in args.only]
    if not runs:
        raise SystemExit(f"error: --only: no run is labelled {args.only}; labels: {[r[0] for r in RUNS]}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        checkpoints = {hub: stand_in(hub, tmp / "models") for hub in ARCHITECTURES}
        data = pages(tmp)
        results = {
            label: run(EXAMPLES / file, tmp, checkpoints, data, changes) for label, file, changes, _ in runs
        }
    wrong = [
        f"{label}: exit {results[label]['exit_code']}, expected {want}"
        for label, _, _, want in runs
        if results[label]["exit_code"] != want
    ]
    if args.json:
        written = results
        if args.only and args.json.exists():  # the other runs' results stay, in RUNS's order
            kept = json.loads(args.json.read_text())["examples"]
            written = {
                label: results.get(label) or kept[label] for label, *_ in RUNS if label in {**kept, **results}
            }
        args.json.write_text(json.dumps({"examples": written}, indent=1) + "\n")
        print(f"wrote {args.json}")
    if wrong:
        print("\n".join(["error: an example did not come out as its docs say:", *wrong]))
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()
