"""Exports of a picked trial: each format loads in (or holds only keys of) its tool."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import create_trial

from tests.support.helpers import swift_argv, train_config
from tests.support.llamafactory_keys import LLAMAFACTORY_KEYS
from tests.support.swift_keys import SWIFT_SFT_KEYS
from vlsweep.export import export, sweep_config
from vlsweep.results import SweepResults
from vlsweep.search.config import distributions, load_sweep_config, sanitized_config


@pytest.fixture
def study_url(tmp_path, tiny_checkpoint, demo_data):
    """A study as `vlsweep launch` leaves it (config attr, metric names), trials made by hand."""
    return make_study(tmp_path, tiny_checkpoint("qwen2_vl"), demo_data)


def make_study(tmp_path: Path, checkpoint: Path, demo_data: Path) -> str:
    """The study of ``study_url`` on another checkpoint; its storage URL."""
    raw = train_config(checkpoint, demo_data, budget={"steps": 3, "batch_size": 4})
    raw.update(
        name="exp",
        lora={"vision": True, "projector": "full", "rank": {"vision": 4}},
        space={
            "lr_vision": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
            "lr_projector": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
            "lr_llm": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
            "lora_r": {"type": "categorical", "choices": [8, 16]},
            "lora_alpha_ratio": 1.5,
            "mix_temperature": {"type": "float", "low": 0.5, "high": 4.0},
        },
    )
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(raw))
    cfg, base_dir = load_sweep_config(tmp_path / "sweep.yaml")
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(study_name="exp", storage=url, directions=["minimize", "maximize"])
    study.set_metric_names(["cer", "iou"])
    study.set_user_attr("config", sanitized_config(cfg, base_dir))
    dists = distributions(cfg.search_space)
    for i, (cer, iou) in enumerate([(0.4, 0.1), (0.2, 0.5), (0.1, 0.2)]):
        params = {
            "lr_vision": 1e-4 * (i + 1),
            "lr_projector": 2e-3,
            "lr_llm": 3e-4,
            "lora_r": 16,
            "mix_temperature": 2.0,
        }
        study.add_trial(create_trial(values=[cer, iou], params=params, distributions=dists))
    return url


def _results(url: str) -> SweepResults:
    return SweepResults.of(optuna.load_study(study_name="exp", storage=url))


def _training_args() -> set[str]:
    from transformers import Seq2SeqTrainingArguments

    return {f.name for f in dataclasses.fields(Seq2SeqTrainingArguments)}


def test_peft_export_loads_as_a_lora_config_and_attaches_to_the_model(study_url, tmp_path, tiny_checkpoint):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    res = _results(study_url)
    trial = res.trial(1)
    export(res, trial, "peft", tmp_path / "peft")
    cfg = LoraConfig.from_pretrained(str(tmp_path / "peft"))
    assert cfg.r == 16 and cfg.lora_alpha == pytest.approx(24.0)  # alpha = 1.5 x r
    assert list(cfg.rank_pattern.values()) == [4]  # the vision group's own rank
    assert list(cfg.alpha_pattern.values()) == [pytest.approx(6.0)]
    assert cfg.modules_to_save == ["model.visual.merger"]
    model = AutoModelForImageTextToText.from_pretrained(str(tiny_checkpoint("qwen2_vl")))
    peft_model = get_peft_model(model, cfg)
    adapted = {
        n.removesuffix(".lora_A.default.weight") for n, _ in peft_model.named_parameters() if "lora_A" in n
    }
    assert any(".visual.blocks." in n for n in adapted) and any(".language_model." in n for n in adapted)
    assert not any(".merger." in n for n in adapted)

    groups = json.loads((tmp_path / "peft" / "param_groups.json").read_text())
    assert groups["vlsweep"]["trial"] == 1 and groups["vlsweep"]["values"] == {"cer": 0.2, "iou": 0.5}
    lrs = {g["name"]: g["lr"] for g in groups["groups"]}
    assert lrs == {
        "vision": pytest.approx(2e-4),
        "projector": pytest.approx(2e-3),
        "llm": pytest.approx(3e-4),
    }
    names = [n for n, _ in model.named_parameters()]
    for g in groups["groups"]:
        assert any(re.match(g["regex"], n) for n in names), g


def test_llamafactory_export_holds_only_keys_llamafactory_accepts(study_url, tmp_path):
    res = _results(study_url)
    export(res, res.trial(1), "llamafactory", tmp_path / "lf")
    text = (tmp_path / "lf" / "llamafactory.yaml").read_text()
    doc = yaml.safe_load(text)
    unknown = set(doc) - LLAMAFACTORY_KEYS - _training_args()
    assert not unknown, unknown
    assert doc["learning_rate"] == pytest.approx(3e-4) and doc["lora_rank"] == 16 and doc["lora_alpha"] == 24
    # The projector is trained whole (additional_target), not through LoRA on its layers.
    assert doc["freeze_vision_tower"] is False and doc["freeze_multi_modal_projector"] is True
    assert doc["additional_target"] == "model.visual.merger"
    assert doc["template"] == "qwen2_vl" and doc["max_steps"] == 3
    probs = [float(p) for p in doc["interleave_probs"].split(",")]
    assert len(probs) == len(doc["dataset"].split(",")) and sum(probs) == pytest.approx(1.0, abs=1e-3)
    # What it cannot express is said, with the searched values.
    assert "lr_vision=0.0002" in text and "lr_projector=0.002" in text
    assert "study 'exp', trial 1: cer=0.2, iou=0.5" in text and "Exported by vlsweep" in text


def test_llamafactory_export_says_when_a_frozen_projector_is_closer_than_the_one_rate(study_url, tmp_path):
    study = optuna.load_study(study_name="exp", storage=study_url)
    dists = distributions(sweep_config(_results(study_url)).search_space)
    slow = {"lr_vision": 1e-4, "lr_projector": 2e-5, "lr_llm": 1e-3, "lora_r": 16, "mix_temperature": 2.0}
    study.add_trial(create_trial(values=[0.05, 0.05], params=slow, distributions=dists))
    res = _results(study_url)
    export(res, res.trial(3), "llamafactory", tmp_path / "slow")
    text = (tmp_path / "slow" / "llamafactory.yaml").read_text()
    assert "# NOTE: the trial trained the projector 50x slower than learning_rate (2e-05)" in text
    assert "drop additional_target (the projector then stays frozen)" in text
    # The trial of the fixture trains its projector faster than the LLM: no such note.
    export(res, res.trial(1), "llamafactory", tmp_path / "fast")
    assert "slower than learning_rate" not in (tmp_path / "fast" / "llamafactory.yaml").read_text()


def test_llamafactory_export_registers_the_trials_data_in_sharegpt(study_url, tmp_path, demo_data):
    res = _results(study_url)
    export(res, res.trial(1), "llamafactory", tmp_path / "lf")
    doc = yaml.safe_load((tmp_path / "lf" / "llamafactory.yaml").read_text())
    data_dir = tmp_path / "lf" / doc["dataset_dir"]
    info = json.loads((data_dir / "dataset_info.json").read_text())
    assert set(doc["dataset"].split(",")) == {"vlsweep_train_ocr", "vlsweep_train_grounding"}
    assert set(info) == {f"vlsweep_{s}_{t}" for s in ("train", "val") for t in ("ocr", "grounding")}
    source = [json.loads(line) for line in (demo_data / "train.jsonl").read_text().splitlines()]
    rows = {}
    for name in ("vlsweep_train_ocr", "vlsweep_train_grounding"):
        assert info[name]["formatting"] == "sharegpt"
        lines = (data_dir / info[name]["file_name"]).read_text().splitlines()
        rows[name] = [json.loads(line) for line in lines]
    assert len(rows["vlsweep_train_ocr"]) + len(rows["vlsweep_train_grounding"]) == len(source)
    ocr = rows["vlsweep_train_ocr"][0]
    assert ocr["messages"][0] == {"role": "user", "content": "<image>What is the text in the image?"}
    assert Path(ocr["images"][0]).is_absolute() and Path(ocr["images"][0]).is_file()
    grounding = rows["vlsweep_train_grounding"][0]
    assert grounding["messages"][0]["content"].startswith("<image>Where is ")
    # Qwen2-VL's own box format, as the trial trained on it.
    box = r"<\|box_start\|>\(\d+,\d+\),\(\d+,\d+\)<\|box_end\|>"
    assert re.fullmatch(box, grounding["messages"][1]["content"])


def test_swift_export_uses_only_swift_sft_arguments(study_url, tmp_path):
    res = _results(study_url)
    export(res, res.trial(2), "swift", tmp_path / "sw", force=True)
    script = (tmp_path / "sw" / "swift_sft.sh").read_text()
    argv = swift_argv(script)
    assert argv[:2] == ["swift", "sft"]
    flags = {a[2:]: i for i, a in enumerate(argv) if a.startswith("--")}
    unknown = set(flags) - SWIFT_SFT_KEYS - _training_args()
    assert not unknown, unknown
    assert float(argv[flags["vit_lr"] + 1]) == pytest.approx(3e-4)
    assert float(argv[flags["aligner_lr"] + 1]) == pytest.approx(2e-3)
    assert float(argv[flags["learning_rate"] + 1]) == pytest.approx(3e-4)
    assert argv[flags["freeze_vit"] + 1] == "false"
    # A local checkpoint: ms-swift needs the type and template said.
    assert argv[flags["model_type"] + 1] == "qwen2_vl" and argv[flags["template"] + 1] == "qwen2_vl"
    assert argv[flags["modules_to_save"] + 1] == "model.visual.merger"
    assert "trial 2: cer=0.1, iou=0.2" in script
    bash = subprocess.run(
        ["bash", "-n", str(tmp_path / "sw" / "swift_sft.sh")], capture_output=True, text=True
    )
    assert bash.returncode == 0, bash.stderr


def test_swift_export_carries_the_task_weights_as_loss_scales(study_url, tmp_path, tiny_checkpoint):
    """Token-level scales that weigh each task as the trial weighed its mean loss: counted
    here from the written files with the model's tokenizer, not with the export's code."""
    from transformers import AutoTokenizer

    res = _results(study_url)
    trial = res.trial(2)
    export(res, trial, "swift", tmp_path / "sw", force=True)
    argv = swift_argv((tmp_path / "sw" / "swift_sft.sh").read_text())
    assert argv[argv.index("--is_binary_loss_scale") + 1] == "false"
    i, j = argv.index("--dataset") + 1, argv.index("--interleave_prob") + 1
    tasks = [Path(d).stem.removeprefix("vlsweep_train_") for d in argv[i : i + 2]]
    probs = dict(zip(tasks, map(float, argv[j : j + 2]), strict=True))
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint("qwen2_vl"))
    scale, tokens = {}, {}
    for task in ("ocr", "grounding"):
        path = tmp_path / "sw" / "data" / f"vlsweep_train_{task}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        (scale[task],) = {r["messages"][1]["loss_scale"] for r in rows}  # one scale per task
        answers = [r["messages"][1]["content"] + "<|im_end|>\n" for r in rows]
        tokens[task] = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers) / len(rows)
    share = {t: probs[t] * tokens[t] / sum(probs[u] * tokens[u] for u in probs) for t in probs}
    weight_ocr = trial.params.get("weight_ocr", 0.5)
    assert {t: scale[t] * share[t] for t in probs} == pytest.approx(
        {"ocr": weight_ocr, "grounding": 1 - weight_ocr}, rel=1e-3
    )


def test_exports_ask_with_the_models_own_system_prompt(study_url, tmp_path, tiny_checkpoint):
    """The tools' templates add a default system prompt of their own; the exports set the
    one the model's chat template renders (the trial's prompts), even when that is none."""
    from transformers import AutoProcessor

    from vlsweep.export import chat_system

    proc = AutoProcessor.from_pretrained(tiny_checkpoint("qwen2_vl"))
    system = chat_system(proc)
    assert system is not None
    user = [{"role": "user", "content": [{"type": "text", "text": "q"}]}]
    given = [{"role": "system", "content": [{"type": "text", "text": system}]}]
    with_system = [*given, *user] if system else user
    assert proc.apply_chat_template(user, add_generation_prompt=True, tokenize=False) == (
        proc.apply_chat_template(with_system, add_generation_prompt=True, tokenize=False)
    )
    res = _results(study_url)
    export(res, res.trial(1), "llamafactory", tmp_path / "lf")
    assert yaml.safe_load((tmp_path / "lf" / "llamafactory.yaml").read_text())["default_system"] == system
    export(res, res.trial(1), "swift", tmp_path / "sw", force=True)
    argv = swift_argv((tmp_path / "sw" / "swift_sft.sh").read_text())
    assert argv[argv.index("--system") + 1] == system


def test_swift_export_refuses_a_checkpoint_whose_image_token_swift_does_not_expand(study_url, tmp_path):
    """ms-swift expands Qwen2-VL images at Qwen's token id; the tiny checkpoint has its own
    vocabulary, so ms-swift would train it on one unexpanded image token per image."""
    from vlsweep.errors import UserInputError

    res = _results(study_url)
    with pytest.raises(UserInputError, match=r"image token id is \d+, but ms-swift's qwen2_vl template"):
        export(res, res.trial(2), "swift", tmp_path / "sw")
    assert not (tmp_path / "sw" / "data").exists()


def test_swift_export_refuses_loraplus_with_module_lrs_unless_forced(study_url, tmp_path, capsys):
    from vlsweep.errors import UserInputError

    res = _results(study_url)
    res.config["lora"]["loraplus_lr_ratio"] = 16.0
    with pytest.raises(UserInputError) as err:
        export(res, res.trial(2), "swift", tmp_path / "sw")
    assert "drops --vit_lr and --aligner_lr" in str(err.value) and "--force" in str(err.value)
    assert not (tmp_path / "sw" / "swift_sft.sh").exists()
    export(res, res.trial(2), "swift", tmp_path / "sw", force=True)
    script = (tmp_path / "sw" / "swift_sft.sh").read_text()
    assert "# NOTE: (exported with --force) lora.loraplus_lr_ratio" in script
    assert "(exported with --force)" in capsys.readouterr().err


def test_vlsweep_export_is_a_train_config_with_the_trial_params(study_url, tmp_path):
    from vlsweep.config import load_train_config

    res = _results(study_url)
    export(res, res.trial(0), "vlsweep", tmp_path / "v", steps=50)
    cfg, _ = load_train_config(tmp_path / "v" / "train.yaml")
    p = cfg.params
    assert (p.lr_vision, p.lr_projector, p.lr_llm, p.lora_r) == (pytest.approx(1e-4), 2e-3, 3e-4, 16)
    assert p.lora_alpha_ratio == 1.5 and p.mix_temperature == 2.0  # fixed in the space, sampled
    assert cfg.budget.steps == 50 and cfg.lora.rank == {"vision": 4}


def test_cli_export_with_an_empty_filter_is_exit_2(study_url, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlsweep.cli",
            "export",
            "exp",
            "--storage",
            study_url,
            "--where",
            "cer<=0.01",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(
        "error: no feasible COMPLETE trial in study 'exp' satisfies --where cer<=0.01"
    )
    assert "Traceback" not in out.stderr and not list(Path(tmp_path).glob("export-*"))


def test_cli_report_writes_one_offline_html(study_url, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "vlsweep.cli", "report", "exp", "--storage", study_url, "-o", "r.html"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "r.html").read_text()
    assert page.count('class="plotly-graph-div"') == 4
    # Self-contained: plotly.js is inlined, nothing is fetched from a CDN.
    assert not re.search(r"<script[^>]*\bsrc=|<link\b", page)


def test_report_png_without_a_browser_says_how_to_get_one(study_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "BROWSER_PATH"}
    env["PATH"] = str(tmp_path / "empty-path")
    out = subprocess.run(
        [sys.executable, "-m", "vlsweep.cli", "report", "exp", "--storage", study_url, "--png"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 2
    assert out.stderr.startswith("error: --png needs Chromium or Chrome and found none: install it")
    assert "does not download" in out.stderr and "Traceback" not in out.stderr


def test_exports_note_each_strategy_the_trainer_cannot_run(study_url, tmp_path):
    from vlsweep.config import load_train_config

    res = _results(study_url)
    trial = res.trial(1)
    strategy = {
        "loss_balance": "famo",
        "curriculum_ratio": 0.4,
        "vision_first_ratio": 0.2,
        "lora_r_vision": 16,
        "lora_targets_llm": "attention",
    }
    trial.params.update(strategy)  # as a sweep with these fixed in its space records them
    res.config["space"].update(strategy)
    export(res, trial, "vlsweep", tmp_path / "v")
    params = load_train_config(tmp_path / "v" / "train.yaml")[0].params
    assert {k: getattr(params, k) for k in strategy} == strategy  # vlsweep train runs them all
    export(res, trial, "llamafactory", tmp_path / "lf")
    text = (tmp_path / "lf" / "llamafactory.yaml").read_text()
    for needle in ("loss_balance=famo", "curriculum_ratio=0.4", "vision_first_ratio=0.2", "lora_r_vision=16"):
        assert needle in text
    export(res, trial, "peft", tmp_path / "p")
    doc = json.loads((tmp_path / "p" / "param_groups.json").read_text())
    assert doc["strategies"]["loss_balance"] == "famo"
    cfg = json.loads((tmp_path / "p" / "adapter_config.json").read_text())
    assert 16 in cfg["rank_pattern"].values()
    assert "q_proj" in cfg["target_modules"] and "gate_proj" not in cfg["target_modules"]


def _quantized(url: str, projector: str = "full") -> SweepResults:
    res = _results(url)
    res.config["model"]["quantization"] = {"bits": 4, "type": "nf4", "double_quant": True}
    res.config["lora"]["projector"] = projector
    return res


def test_quantized_exports_carry_the_bits_in_each_tools_keys(study_url, tmp_path):
    res = _quantized(study_url, projector="frozen")
    export(res, res.trial(1), "llamafactory", tmp_path / "lf")
    doc = yaml.safe_load((tmp_path / "lf" / "llamafactory.yaml").read_text())
    assert not set(doc) - LLAMAFACTORY_KEYS - _training_args()
    assert {k: doc[k] for k in ("quantization_bit", "quantization_method", "quantization_type")} == {
        "quantization_bit": 4,
        "quantization_method": "bnb",
        "quantization_type": "nf4",
    }
    assert doc["double_quantization"] is True
    assert "the vision tower too" in (tmp_path / "lf" / "llamafactory.yaml").read_text()
    export(res, res.trial(2), "swift", tmp_path / "sw", force=True)
    argv = swift_argv((tmp_path / "sw" / "swift_sft.sh").read_text())
    flags = {a[2:]: argv[i + 1] for i, a in enumerate(argv) if a.startswith("--")}
    assert not set(flags) - SWIFT_SFT_KEYS - _training_args()
    assert (flags["quant_method"], flags["quant_bits"], flags["bnb_4bit_quant_type"]) == ("bnb", "4", "nf4")
    assert flags["bnb_4bit_use_double_quant"] == "true"


def test_llamafactory_export_refuses_a_whole_projector_on_a_quantized_base(study_url, tmp_path):
    """LLaMA-Factory would quantize the projector, whose weights bitsandbytes then gives no
    gradient: additional_target would train its biases only."""
    from vlsweep.errors import UserInputError

    res = _quantized(study_url, projector="full")
    with pytest.raises(UserInputError, match="train the projector's biases only"):
        export(res, res.trial(1), "llamafactory", tmp_path / "lf")
    assert not (tmp_path / "lf").exists()


def test_merged_export_of_a_quantized_sweep_merges_into_the_unquantized_base(study_url, tmp_path, capsys):
    from peft import get_peft_model

    from vlsweep.export import target_config, trial_params
    from vlsweep.export.merged import _merged, notes
    from vlsweep.trials import load_base, peft_config, plan_lora

    res = _quantized(study_url, projector="frozen")
    cfg = target_config(res)
    params = trial_params(cfg, res.trial(1))
    plain = cfg.model.model_copy(update={"quantization": None})
    base = load_base(plain)
    plan = plan_lora(base.model, base.groups, params, cfg.lora)
    get_peft_model(base.model, peft_config(plan, params, cfg.lora)).save_pretrained(tmp_path / "adapter")
    model, _ = _merged(cfg, tmp_path / "adapter")
    import bitsandbytes as bnb
    from peft.tuners.lora import LoraLayer

    assert not any(isinstance(m, (bnb.nn.Linear4bit, LoraLayer)) for m in model.modules())
    assert all(p.is_floating_point() for p in model.parameters())

    class Ctx:
        pass

    ctx = Ctx()
    ctx.cfg = cfg
    (note,) = notes(ctx)
    assert "merged into the base's unquantized weights" in note
