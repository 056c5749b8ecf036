"""The exports in the real trainers: LLaMA-Factory and ms-swift from PyPI, each in a venv of
its own (``.ci/trainers.sh`` makes them once and caches them). Each exported config runs
for a few steps on a tiny checkpoint on the CPU, from its export directory with no edit,
and the tool's own log says which parameters it trained; they must be the trial's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.export.test_export import _results, make_study, study_url  # noqa: F401  (the fixture)
from vlsweep.export import export, target_config, trial_params

pytestmark = pytest.mark.trainers

OFFLINE = {"HF_HUB_OFFLINE": "1", "MODELSCOPE_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _tool(var: str) -> Path:
    path = os.environ.get(var)
    if not path or not Path(path).exists():
        if os.environ.get("VLSWEEP_REQUIRE_TRAINERS"):
            pytest.fail(f'${var} is not set to an installed tool: eval "$(bash .ci/trainers.sh)"')
        pytest.skip(f'${var} not set (eval "$(bash .ci/trainers.sh)")')
    return Path(path)


def _expressible(url: str):
    """The study's results with one LoRA rank for every group, as both tools express it
    (the fixture's own vision rank is a per-group rank they cannot: the export notes it)."""
    res = _results(url)
    res.config["lora"]["rank"] = {}
    return res


def _trainable(results, trial) -> tuple[int, list[str]]:
    """How many parameters the trial trained, and its fully trained modules, counted on
    the model as the engine builds it."""
    from vlsweep.trials import load_base, plan_lora
    from vlsweep.trials.lora import attach_lora

    cfg = target_config(results)
    params = trial_params(cfg, trial)
    base = load_base(cfg.model)
    plan = plan_lora(base.model, base.groups, params, cfg.lora)
    model = attach_lora(base.model, plan, params, cfg.lora)
    return sum(p.numel() for p in model.parameters() if p.requires_grad), plan.modules_to_save


def _run(argv: list[str], cwd: Path, tool: Path) -> str:
    env = {**os.environ, **OFFLINE, "PATH": f"{tool.parent}:{os.environ['PATH']}"}
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    return log


def _eval(model: str, adapter: Path, val: Path) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlsweep.cli",
            "eval",
            "--model",
            model,
            "--adapter",
            str(adapter),
            "--data",
            str(val),
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_llamafactory_trains_what_the_trial_trained(study_url, tmp_path, demo_data):  # noqa: F811
    tool = _tool("VLSWEEP_LLAMAFACTORY")
    res = _expressible(study_url)
    trial = res.trial(1)
    out = tmp_path / "lf"
    export(res, trial, "llamafactory", out)
    log = _run([str(tool), "train", "llamafactory.yaml", "max_steps=2", "logging_steps=1"], out, tool)
    n, modules = _trainable(res, trial)
    m = re.search(r"trainable params: ([\d,]+)", log)
    assert m, log[-3000:]
    assert int(m.group(1).replace(",", "")) == n  # LoRA on the same layers, the projector whole
    saved = out / yaml.safe_load((out / "llamafactory.yaml").read_text())["output_dir"]
    assert json.loads((saved / "adapter_config.json").read_text())["modules_to_save"] == modules
    metrics = _eval(target_config(res).model.name_or_path, saved, demo_data / "val.jsonl")
    assert metrics["cer"] >= 0 and 0 <= metrics["iou"] <= 1


# The tiny checkpoint has its own vocabulary, so its image token is not the one ms-swift's
# Qwen2-VL template expands: the export refuses it without --force (trained, the inputs
# are broken; the trainable set and the learning rates, checked here, are not).
def _swift(out: Path, tool: Path, *extra: str) -> str:
    return _run(
        ["bash", str(out / "swift_sft.sh"), "--max_steps", "2", "--logging_steps", "1", *extra], out, tool
    )


def _check_swift_trained_the_trial(results, trial, log: str) -> None:
    """ms-swift's log: the trial's count of trainable parameters (swift prints millions to
    4 decimals) and its three module learning rates."""
    n, _ = _trainable(results, trial)
    m = re.search(r"\(([\d.]+)M Trainable", log)
    assert m, log[-3000:]
    assert float(m.group(1)) == pytest.approx(n / 1e6, abs=5e-5)
    p = trial_params(target_config(results), trial)
    lrs = re.search(r"vit_lr: ([\d.e-]+), aligner_lr: ([\d.e-]+), llm_lr: ([\d.e-]+)", log)
    assert lrs, log[-3000:]
    assert [float(x) for x in lrs.groups()] == pytest.approx([p.lr_vision, p.lr_projector, p.lr_llm])


def test_swift_trains_what_the_trial_trained_at_its_module_lrs(study_url, tmp_path, demo_data):  # noqa: F811
    tool = _tool("VLSWEEP_SWIFT")
    res = _expressible(study_url)
    trial = res.trial(2)
    out = tmp_path / "sw"
    export(res, trial, "swift", out, force=True)
    log = _swift(out, tool)
    _check_swift_trained_the_trial(res, trial, log)
    (ckpt,) = (out / "output").glob("*/v*/checkpoint-2")
    metrics = _eval(target_config(res).model.name_or_path, ckpt, demo_data / "val.jsonl")
    assert 0 <= metrics["iou"] <= 1


def test_swift_loraplus_drops_the_module_lrs_as_the_export_warns(study_url, tmp_path):  # noqa: F811
    """What the export refuses without --force, run: ms-swift's LoRA+ optimizer replaces
    the per-module one, and the module learning rates are gone from its log."""
    tool = _tool("VLSWEEP_SWIFT")
    res = _results(study_url)
    res.config["lora"]["loraplus_lr_ratio"] = 16.0
    out = tmp_path / "sw"
    export(res, res.trial(2), "swift", out, force=True)
    log = _swift(out, tool)
    assert "optimizer='lorap'" in log or "optimizer=lorap" in log, log[-3000:]
    assert "vit_lr: " not in log


def test_swift_trains_a_checkpoint_with_qwens_ids_as_exported_with_images_expanded(
    tmp_path, qwen_ids_checkpoint, demo_data
):
    """On a checkpoint that keeps Qwen's special-token ids the swift export needs no
    --force: ms-swift runs it as written (only the step count changed), expands each image
    into as many <|image_pad|> tokens as the checkpoint's own processor does, and trains
    the trial's parameters at its module learning rates."""
    from PIL import Image

    from vlsweep.trials import load_processing

    tool = _tool("VLSWEEP_SWIFT")
    url = make_study(tmp_path, qwen_ids_checkpoint, demo_data)
    res = _expressible(url)
    trial = res.trial(2)
    out = tmp_path / "sw"
    export(res, trial, "swift", out)  # no --force: nothing to refuse
    assert "--force" not in (out / "swift_sft.sh").read_text()
    log = _swift(out, tool)
    _check_swift_trained_the_trial(res, trial, log)
    # The sample ms-swift prints: the image expanded to the processor's count of tokens.
    shown = re.findall(r"<\|vision_start\|>\[(?:<\|image_pad\|>|151655) \* (\d+)\]<\|vision_end\|>", log)
    assert shown, log[-3000:]
    processor = load_processing(target_config(res).model).processor
    counts = set()
    for line in (demo_data / "train.jsonl").read_text().splitlines():
        rec = json.loads(line)
        with Image.open(demo_data / rec["image"]) as im:
            grid = processor.image_processor(images=[im.convert("RGB")], return_tensors="pt")[
                "image_grid_thw"
            ]
        counts.add(int(grid.prod()) // 4)
    assert {int(x) for x in shown} <= counts, (shown, counts)


def _quantized(url: str, bits: int):
    """The study's results as if swept on a ``bits``-bit base (model.quantization)."""
    res = _expressible(url)
    res.config["model"]["quantization"] = {"bits": bits}
    return res


def test_llamafactory_trains_a_qlora_export_on_a_4bit_base(study_url, tmp_path):  # noqa: F811
    """The export carries quantization_bit and friends, and LLaMA-Factory loads the base
    through bitsandbytes and trains the trial's LoRA on it (the CPU has bitsandbytes'
    4-bit kernels). A projector trained whole is refused (test_export): LLaMA-Factory would
    quantize it, and train its biases only."""
    tool = _tool("VLSWEEP_LLAMAFACTORY")
    res = _quantized(study_url, 4)
    res.config["lora"]["projector"] = "frozen"
    trial = res.trial(1)
    out = tmp_path / "lf"
    export(res, trial, "llamafactory", out)
    args = yaml.safe_load((out / "llamafactory.yaml").read_text())
    assert (args["quantization_bit"], args["quantization_method"], args["quantization_type"]) == (
        4,
        "bnb",
        "nf4",
    )
    log = _run([str(tool), "train", "llamafactory.yaml", "max_steps=2", "logging_steps=1"], out, tool)
    assert "Quantizing model to 4 bit with bitsandbytes" in log, log[-3000:]
    n, _ = _trainable(res, trial)
    m = re.search(r"trainable params: ([\d,]+)", log)
    assert m, log[-3000:]
    assert int(m.group(1).replace(",", "")) == n, (int(m.group(1).replace(",", "")), n)


def test_swift_trains_a_qlora_export_on_a_4bit_base(study_url, tmp_path):  # noqa: F811
    """ms-swift quantizes the language model as the trial did (its vision tower and aligner
    left out), and trains the trial's parameters at its module learning rates."""
    tool = _tool("VLSWEEP_SWIFT")
    res = _quantized(study_url, 4)
    trial = res.trial(2)
    out = tmp_path / "sw"
    export(res, trial, "swift", out, force=True)
    script = (out / "swift_sft.sh").read_text()
    assert "--quant_method bnb" in script and "--quant_bits 4" in script
    log = _swift(out, tool)
    _check_swift_trained_the_trial(res, trial, log)
