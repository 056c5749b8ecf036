"""One demo trial on 1 train worker, on 2 (ddp) and on 2 sharded (fsdp): real Ray Train, gloo.

Each trial is the embedded demo sweep's trial (builtin tiny Qwen2-VL, the demo data, its
budget) with the baseline's parameters, run by ``run_trial`` on every rank of a Ray Train
``TorchTrainer``, one thread per worker. The 1-worker trial runs with 3 training seeds:
the spread of its CER and IoU over them is the tolerance the 2-worker trials (seed 0) are
held to. Also recorded per set-up: training steps per second (the main rank's training
time, evaluations excluded), and the evaluation's and the base load's seconds.

The ``reload`` part measures what a multi-worker trial pays instead of a kept base: a
2B-shaped Qwen2-VL checkpoint (random weights, bfloat16 safetensors, as published) loaded
by ``load_base`` on the CPU with every weight then read once (safetensors maps the file:
an unread page would be paid at the first forward pass), twice: first with the page
cache dropped (root only; recorded), as a node reading the file from its disk, then
with the file cached, as a node's later trials find it; scaled by parameters to 7B and
72B.

    python benchmarks/multi_worker.py [trials] [--steps 200] [--json docs/benchmarks/multi_worker.json]
    python benchmarks/multi_worker.py reload [--json ...]
    python benchmarks/multi_worker.py device_map [--json ...]   # where device_map puts a 72B
    python benchmarks/multi_worker.py --quick          # CI smoke: 8 steps, 2 seeds

``--json`` writes ``{"one_worker": {"cer", "iou", "steps_per_s", ...}, "two_workers":
{...}, "sharded": {...}, "tolerance": {"cer": SPREAD, "iou": SPREAD}, "within": {...}}``
(and ``"reload"`` from the reload part), keeping the other part's keys.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Published parameter counts (Qwen2-VL report, arXiv 2409.12191, Table 1; the model cards):
# what the reload is scaled by, in bfloat16 bytes.
FAMILY_PARAMS = {"2B": 2.21e9, "7B": 8.29e9, "72B": 73.4e9}


def _rank(loop: dict[str, Any]) -> None:
    """Ray Train's per-worker function: the demo trial through the engine on this rank."""
    import torch

    from vlsweep.config import TrainConfig
    from vlsweep.params import TrialParams
    from vlsweep.trials import load_data, run_trial
    from vlsweep.trials.ranks import Ranks

    torch.set_num_threads(1)
    ranks = Ranks.current(loop["strategy"])
    cfg = TrainConfig.model_validate(loop["cfg"])
    data = load_data(cfg.data, Path(loop["base_dir"]))
    result = run_trial(TrialParams.of(loop["params"]), cfg.budget, cfg=cfg, data=data, ranks=ranks)
    if ranks.main:
        Path(loop["out"]).write_text(json.dumps(result))


def _trial(spec: dict[str, Any], workers: int, strategy: str, seed: int, tmp: Path) -> dict[str, Any]:
    from ray import train
    from ray.train.torch import TorchConfig, TorchTrainer

    from vlsweep.params import BASELINE

    out = tmp / f"{workers}-{strategy}-{seed}.json"
    trainer = TorchTrainer(
        _rank,
        train_loop_config={
            "cfg": {**spec, "seed": seed},
            "base_dir": str(ROOT),
            "params": dict(BASELINE),
            "strategy": strategy,
            "out": str(out),
        },
        scaling_config=train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=train.RunConfig(name=out.stem, storage_path=str(tmp / "ray")),
    )
    started = time.perf_counter()
    trainer.fit()
    result = json.loads(out.read_text())
    steps = result["steps"]
    return {
        "cer": result["cer"],
        "iou": result["iou"],
        "steps_per_s": steps / result["train_seconds"],
        "train_seconds": result["train_seconds"],
        "eval_seconds": result["eval_seconds"],
        "load_seconds": result["load_seconds"],
        "trial_seconds": time.perf_counter() - started,
        "seed": seed,
    }


def _demo_spec(steps: int | None) -> dict[str, Any]:
    from vlsweep import demo
    from vlsweep.config import TrainConfig
    from vlsweep.search.config import load_sweep_config
    from vlsweep.search.plan import resolve

    cfg, base_dir = load_sweep_config(ROOT / "vlsweep" / "configs" / "demo-sweep.yaml")
    spec = resolve(cfg, base_dir).trial_spec
    if steps is not None:
        spec["budget"]["steps"] = steps
    return demo.resolve(TrainConfig.model_validate(spec)).model_dump(mode="json")


def _say(what: str, r: dict[str, Any]) -> None:
    print(f"{what}: cer {r['cer']:.4f} iou {r['iou']:.4f} {r['steps_per_s']:.2f} steps/s", flush=True)


def trials(steps: int | None, seeds: list[int]) -> dict[str, Any]:
    from vlsweep.search.backend import local_ray

    spec = _demo_spec(steps)
    with local_ray(num_cpus=2, log=print), tempfile.TemporaryDirectory(prefix="vlsweep-multi-worker-") as tmp:
        ones = [_trial(spec, 1, "ddp", s, Path(tmp)) for s in seeds]
        for r in ones:
            _say(f"1 worker, seed {r['seed']}", r)
        two = _trial(spec, 2, "ddp", seeds[0], Path(tmp))
        _say("2 workers (ddp)", two)
        sharded = _trial(spec, 2, "fsdp", seeds[0], Path(tmp))
        _say("2 workers (fsdp)", sharded)
    one = ones[0]
    tolerance = {m: max(r[m] for r in ones) - min(r[m] for r in ones) for m in ("cer", "iou")}
    within = {
        name: {m: abs(run[m] - one[m]) <= tolerance[m] for m in ("cer", "iou")}
        for name, run in (("two_workers", two), ("sharded", sharded))
    }
    return {
        "one_worker": {
            **one,
            "seeds": ones,
            "steps_per_s_median": statistics.median(r["steps_per_s"] for r in ones),
        },
        "two_workers": two,
        "sharded": sharded,
        "tolerance": tolerance,
        "within": within,
        "steps": spec["budget"]["steps"],
        "batch_size": spec["budget"]["batch_size"],
        "threads_per_worker": 1,
    }


def reload(size: str) -> dict[str, Any]:
    """Write a random-weight Qwen2-VL of the published ``size``'s shape, load it twice."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from vlsweep.config import ModelConfig
    from vlsweep.trials import load_base

    shapes = {  # the published 2B's configuration (its config.json), vision tower included
        "2B": dict(
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            vocab_size=151936,
            tie_word_embeddings=True,
        ),
    }
    with tempfile.TemporaryDirectory(prefix="vlsweep-reload-", dir="/tmp") as tmp:
        text = shapes[size]
        config = Qwen2VLConfig(
            text_config=text,
            vision_config=dict(depth=32, embed_dim=1280, hidden_size=text["hidden_size"], num_heads=16),
        )
        torch.manual_seed(0)
        started = time.perf_counter()
        model = Qwen2VLForConditionalGeneration(config).to(torch.bfloat16)
        model.save_pretrained(tmp)
        made = time.perf_counter() - started
        params = sum(p.numel() for p in model.parameters())
        del model
        _copy_processor(Path(tmp))
        seconds = []
        dropped = _drop_page_cache()  # the first load from the disk, as a fresh node's
        for _ in range(2):
            started = time.perf_counter()
            base = load_base(ModelConfig(name_or_path=tmp, device="cpu", dtype="bfloat16"))
            _touch(base.model)
            seconds.append(time.perf_counter() - started)
            del base
    return {
        "size": size,
        "params": params,
        "write_seconds": made,
        "page_cache_dropped": dropped,
        "load_seconds_cold": seconds[0],
        "load_seconds_warm": seconds[1],
        "scaled_load_seconds": {k: seconds[0] / params * v for k, v in FAMILY_PARAMS.items()},
        "scaled_load_seconds_warm": {k: seconds[1] / params * v for k, v in FAMILY_PARAMS.items()},
    }


def _touch(model: Any) -> None:
    """Read every page of every weight: safetensors maps the file, and a load that only
    maps it would be paid at the first forward pass instead (every 1024th value: each
    4 KiB page of bfloat16 once, with almost no arithmetic)."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            float(p.reshape(-1)[::1024].float().sum())


def _drop_page_cache() -> bool:
    """Empty the kernel's page cache (root only), so the next read comes from the disk."""
    import os

    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def device_map_plan(gpus: int = 4, gib: int = 80) -> dict[str, Any]:
    """The sharded spike's other arm, as far as a machine without GPUs takes it: where
    accelerate's ``device_map`` (balanced over ``gpus`` GPUs of ``gib`` GiB) would put a
    bfloat16 Qwen2-VL 72B's weights, against what each FSDP rank holds of the same model.
    Built without weights (the published architecture, as benchmarks/fit_examples.py)."""
    import torch
    from accelerate import infer_auto_device_map, init_empty_weights
    from accelerate.utils import get_balanced_memory
    from fit_examples import ARCHITECTURES, VISION
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from vlsweep.trials.memory import shard_bytes

    arch = ARCHITECTURES["Qwen/Qwen2-VL-72B-Instruct"]
    config = Qwen2VLConfig(
        text_config=dict(arch), vision_config={**VISION, "hidden_size": arch["hidden_size"]}
    )
    with init_empty_weights():
        model = Qwen2VLForConditionalGeneration(config).to(torch.bfloat16)
    model.requires_grad_(False)  # the frozen base: what both hold
    units = list(model._no_split_modules)
    budget = get_balanced_memory(
        model,
        max_memory={i: f"{gib}GiB" for i in range(gpus)},
        no_split_module_classes=units,
        dtype=torch.bfloat16,
    )
    placement = infer_auto_device_map(
        model, max_memory=budget, no_split_module_classes=units, dtype=torch.bfloat16
    )
    per_gpu = dict.fromkeys(range(gpus), 0)
    for name, p in model.named_parameters():
        where = next(
            dev
            for prefix, dev in sorted(placement.items(), key=lambda kv: -len(kv[0]))
            if name == prefix or name.startswith(prefix + ".") or prefix == ""
        )
        per_gpu[int(where)] += p.numel() * 2
    shards = shard_bytes(model, torch.bfloat16, gpus, set(units))
    return {
        "model": "Qwen/Qwen2-VL-72B-Instruct",
        "gpus": gpus,
        "device_map_weights_bytes": per_gpu,
        "fsdp_weights_bytes_per_rank": shards["frozen"] + shards["buffers"],
        "fsdp_gathered_bytes": shards["root"] + 2 * shards["largest_unit"],
    }


def _copy_processor(to: Path) -> None:
    """The builtin tiny model's processor files beside the written weights (the processor
    does not depend on the model's size)."""
    import shutil

    from vlsweep import demo
    from vlsweep.config import ModelConfig

    source = Path(demo.resolve_model(ModelConfig(name_or_path="builtin:tiny-qwen2-vl")).name_or_path)
    for f in source.iterdir():
        if f.is_file() and not f.name.startswith(("model", "config.json", "generation_config")):
            shutil.copy(f, to / f.name)


def doc_table(data: dict[str, Any]) -> str:
    """What docs/cluster.md shows (benchmarks/doc_tables.py): each set-up's trial, the
    tolerance, and the reload when measured."""
    tol = data["tolerance"]
    one = data["one_worker"]
    seeds = ", ".join(str(r["seed"]) for r in one["seeds"])
    head = ["set-up", "CER", "IoU", "within the tolerance", "training steps/s", "training s"]
    head += ["evaluation s", "base load s", "whole trial s"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name: str, r: dict[str, Any], within: str) -> str:
        return (
            f"| {name} | {r['cer']:.4f} | {r['iou']:.4f} | {within} | {r['steps_per_s']:.2f} | "
            f"{r['train_seconds']:.1f} | {r['eval_seconds']:.1f} | {r['load_seconds']:.1f} | "
            f"{r['trial_seconds']:.1f} |"
        )

    rows.append(row(f"1 worker, seed {one['seed']}", one, "(the reference)"))
    for name, key in (("2 workers, ddp", "two_workers"), ("2 workers, fsdp", "sharded")):
        ok = data["within"][key]
        rows.append(row(name, data[key], "yes" if all(ok.values()) else f"no: {ok}"))
    out = "\n".join(rows)
    out += (
        f"\n\nTolerance: the 1-worker trial's spread over seeds {seeds}: CER {tol['cer']:.4f}, "
        f"IoU {tol['iou']:.4f}. {data['steps']} steps of batch {data['batch_size']}, "
        f"{data['threads_per_worker']} thread per worker, on this 2-core machine. The whole trial "
        "is `TorchTrainer.fit()`: it adds Ray Train's start of the workers (processes, imports, "
        "the process group, the data) to the load, training and evaluation."
    )
    if "reload" in data:
        r = data["reload"]
        billions = f"{r['params'] / 1e9:.2f} B"
        out += "\n\n| base | parameters | load_base on the CPU, s |\n|---|---|---|\n"
        out += f"| {r['size']}-shaped, measured (first load) | {billions} | {r['load_seconds_cold']:.1f} |\n"
        out += f"| {r['size']}-shaped, measured (file cached) | {billions} | {r['load_seconds_warm']:.1f} |\n"
        out += "".join(
            f"| {size}, scaled by parameters (first load / cached) | {FAMILY_PARAMS[size] / 1e9:.1f} B | "
            f"{sec:.0f} / {r['scaled_load_seconds_warm'][size]:.0f} |\n"
            for size, sec in r["scaled_load_seconds"].items()
            if size != r["size"]
        )
    if "device_map" in data:
        d = data["device_map"]
        gib = 2**30
        out = out.rstrip("\n")
        placed = ", ".join(f"{b / gib:.1f}" for b in d["device_map_weights_bytes"].values())
        out += (
            f"\n\n| {d['model']} in bfloat16 on {d['gpus']} GPUs | weights per GPU, GiB |\n|---|---|\n"
            f"| accelerate `device_map` (balanced; one GPU computes at a time) | {placed} |\n"
        )
        shards, gathered = d["fsdp_weights_bytes_per_rank"] / gib, d["fsdp_gathered_bytes"] / gib
        out += f"| FSDP, each rank's shards (all compute at once) | {shards:.1f} each |\n"
        out += f"| FSDP, gathered while computing (root unit and two layers) | {gathered:.1f} more |\n"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("part", nargs="?", default="trials", choices=["trials", "reload", "device_map"])
    parser.add_argument("--steps", type=int, default=None, help="budget.steps (default: the demo's)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="CI smoke: 8 steps, seeds 0 and 1")
    args = parser.parse_args()
    if args.part == "reload":
        found = {"reload": reload("2B")}
    elif args.part == "device_map":
        sys.path.insert(0, str(Path(__file__).parent))
        found = {"device_map": device_map_plan()}
    else:
        steps, seeds = (8, [0, 1]) if args.quick else (args.steps, [int(s) for s in args.seeds.split(",")])
        found = trials(steps, seeds)
    print(json.dumps(found, indent=2))
    if args.json is not None:
        kept = json.loads(args.json.read_text()) if args.json.exists() else {}
        kept.update(found)
        args.json.write_text(json.dumps(kept, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
