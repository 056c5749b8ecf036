"""Builtin models that need no download: tiny VLMs that already half-know the demo task.

``builtin:tiny-qwen2-vl`` and ``builtin:tiny-llava`` ship inside the package as weights
(``vlsweep/demo/weights/NAME/``) that this module's recipe built: a tiny random
checkpoint of the real family (tokenizer, processor and chat template included), then a
short pretraining on synthetic data rendered in other styles than the demo data. They
load through the Auto classes like any checkpoint, at once and the same on every machine,
and are checked against the ``SHA256SUMS`` beside them before use.

``vlsweep.demo.rebuild`` makes them again from the recipe, for people who change it
(``vlsweep builtin rebuild``): a few minutes on 2 CPU cores, with the probe that the shipped weights are held
to (``Recipe.probe_*``, checked by the test suite; ``benchmarks/builtin_rebuild.py``
checks that a rebuild meets it too). A build is deterministic for one CPU kind, torch
build and thread count; other CPUs build other (equally good) weights, which is why the
weights ship instead of being built where they run.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlsweep.errors import UserInputError

RECIPE_VERSION = 4
# The build trains with this many torch threads whatever the machine has (thread count
# changes the order of floating-point sums, and so the weights).
BUILD_THREADS = 2
# The shipped weights, one directory per builtin model, each with its SHA256SUMS.
WEIGHTS = Path(__file__).resolve().parent / "weights"
CHECKSUMS = "SHA256SUMS"
PROVENANCE = "vlsweep_builtin.json"


@dataclass(frozen=True)
class Recipe:
    family: str
    size: dict[str, int]
    pretrain_steps: int
    batch_size: int = 16
    lr: float = 2e-3
    # Images of stage 2 (half OCR, half grounding scenes of 2-3 words, each asked about
    # every word), of its one-word scenes, and of stage 1.
    n_samples: int = 3072
    one_word_samples: int = 1024
    vision_samples: int = 1024
    vision_steps: int = 300
    # Rendering styles (synth.STYLES) of stage 1's OCR and grounding scenes.
    vision_styles: tuple[str, str] = ("pretrain", "varied")
    vision_batch_size: int = 32
    vision_lr: float = 1e-3
    # Reading the digits converges long before grounding does; most of stage 2's loss
    # weight goes to grounding.
    grounding_weight: float = 0.75
    # The first steps of stage 2 ask about scenes of one word: the language model learns
    # to write a word's position before it has to pick the asked one out of several.
    one_word_steps: int = 1500
    seed: int = 1234
    # A from-scratch vision tower at the usual 0.02 init gives nearly the same features for
    # every image, and the LLM learns to ignore them; a wider init makes them informative.
    vision_init_std: float = 0.1
    # What the base must do, untrained, on fresh scenes of the style it was pretrained on
    # (probing.probe): read with at most this CER and box the asked-for word with at least
    # this mean IoU. The shipped weights and every rebuild are held to it.
    probe_max_cer: float = 0.05
    probe_min_iou: float = 0.5
    # A builtin whose vision tower (patch embedding and blocks, not the merger) this one
    # takes bit for bit and keeps frozen: stage 1 then trains the projector alone. Models
    # of one family that share a tower, as Qwen2-VL 2B, 7B and 72B share theirs.
    vision_from: str | None = None

    def meets(self, figures: dict[str, Any]) -> bool:
        """Whether probe figures (``vlsweep.demo.probing.probe``) meet this recipe's thresholds."""
        return figures["cer"] <= self.probe_max_cer and figures["iou"] >= self.probe_min_iou


RECIPES = {
    "tiny-qwen2-vl": Recipe(
        "qwen2_vl",
        {"hidden": 96, "layers": 2, "vision_layers": 2, "heads": 4},
        pretrain_steps=4000,
        one_word_steps=1500,
    ),
    # tiny-qwen2-vl's larger sibling, for carrying a sweep from a small model of a family to
    # a large one: its vision tower, and the language model 2.25x wider at the same depth
    # (216 against 96, head width kept at 24 with 9 query and 3 key-value heads), as
    # Qwen2-VL 7B is 2.33x as wide as 2B at 28 layers each with the same 128-wide heads:
    # 4.6x the language-model parameters (858,888 against 188,256). The same pretraining
    # and probe.
    "tiny-qwen2-vl-wide": Recipe(
        "qwen2_vl",
        {
            "hidden": 216,
            "layers": 2,
            "vision_layers": 2,
            "heads": 9,
            "kv_heads": 3,
            "vision_hidden": 96,
            "vision_heads": 4,
        },
        pretrain_steps=4000,
        one_word_steps=1500,
        vision_from="tiny-qwen2-vl",
    ),
    # The LLaVA family's code path more than a demo base: its vision tower sees every image
    # squashed to 112 x 112, and the same recipe leaves it reading partly and grounding
    # poorly (docs/demo.md); its probe holds it to that.
    "tiny-llava": Recipe(
        "llava",
        {"hidden": 96, "layers": 2, "vision_layers": 2, "heads": 4, "image_size": 112},
        pretrain_steps=4000,
        probe_max_cer=0.5,
        probe_min_iou=0.1,
    ),
}


def builtin_path(name: str) -> Path:
    """Where builtin:NAME's shipped weights lie."""
    return WEIGHTS / name


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(path: Path) -> Path:
    """``SHA256SUMS`` of every file in the checkpoint directory ``path``, in the format
    ``sha256sum -c`` reads."""
    files = sorted(f for f in path.iterdir() if f.is_file() and f.name != CHECKSUMS)
    out = path / CHECKSUMS
    out.write_text("".join(f"{sha256(f)}  {f.name}\n" for f in files))
    return out


# Files a checkpoint directory cannot do without: a listing that leaves them out is damaged.
REQUIRED = ("config.json", "model.safetensors")


def verify(path: Path) -> list[str]:
    """What is wrong with the checkpoint directory ``path`` against its ``SHA256SUMS``: a
    missing or unreadable listing, a file missing, changed or not listed (empty when all
    is well)."""
    listing = path / CHECKSUMS
    if not listing.is_file():
        return [f"{listing} is missing"]
    listed: dict[str, str] = {}
    problems = []
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
        expected, sep, name = line.partition("  ")
        if not sep or len(expected) != 64 or not name or "/" in name:
            problems.append(f"{listing}:{number}: not a `sha256sum` line (HASH, two spaces, FILE): {line!r}")
            continue
        listed[name] = expected
    for name in REQUIRED:
        if name not in listed:
            problems.append(f"{listing} does not list {name}")
    for name, expected in listed.items():
        file = path / name
        if not file.is_file():
            problems.append(f"{file} is missing")
        elif sha256(file) != expected:
            problems.append(f"{file} does not match its checksum in {CHECKSUMS}")
    for file in sorted(path.iterdir()):
        if file.is_file() and file.name != CHECKSUMS and file.name not in listed:
            problems.append(f"{file} is not in {CHECKSUMS}")
    return problems


@functools.cache
def _verified(path: Path) -> tuple[str, ...]:
    return tuple(verify(path))


def check_name(name: str, field: str = "model.name_or_path") -> None:
    """A builtin model's name must name a recipe; ``field`` names what the user typed."""
    if name not in RECIPES:
        known = sorted("builtin:" + n for n in RECIPES)
        raise UserInputError(f"{field}: unknown builtin model {name!r}; choose one of {known}")


def builtin_checkpoint(name: str) -> Path:
    """The checkpoint directory of builtin:NAME, its files checked against their checksums
    (once per process and directory)."""
    check_name(name)
    problems = _verified(builtin_path(name))
    if problems:
        raise UserInputError(
            [f"builtin:{name}: {p}" for p in problems]
            + [
                f"builtin:{name}: the shipped weights are damaged or incomplete: reinstall vlsweep, "
                f"or rebuild them from the recipe (`vlsweep builtin rebuild {name} -o DIR`) and set "
                "model.name_or_path to DIR"
            ]
        )
    return builtin_path(name)


def cpu_name() -> str:
    """The CPU kind this machine has, as the OS names it (a build's weights depend on it)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
