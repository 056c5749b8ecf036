"""The README's demo as a new user runs it, timed: fresh clone, install, `vlsweep launch`.

1. ``git clone`` of this repository's HEAD into an empty directory;
2. the README's install, timed: ``python3 -m venv .venv``, ``pip install torch==2.14.1
   torchvision==0.29.1``, ``pip install -e .`` (pip's cache off, as on a new machine);
3. ``vlsweep launch`` in an empty directory with an empty ``$VLSWEEP_CACHE``, timed: when
   the first trial's fine-tune was training (its first step done: the ``train_started``
   its worker records on the trial) and when the whole demo has ended, each from the
   moment the command started; and the front exactly as it printed it.

    python benchmarks/demo_run.py [--json docs/benchmarks/demo_run.json] [--skip-install VENV]
        [--front-json docs/benchmarks/demo_front.json]

``--skip-install VENV`` times the launch alone with an existing environment.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _timed(argv: list[str] | str, cwd: Path, env: dict[str, str], shell: bool = False) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, shell=shell, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--skip-install", type=Path, metavar="VENV", help="use this environment instead")
    ap.add_argument("--front-json", type=Path, help="also write benchmarks/front_noise.py's figures here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vlsweep-demo-run-"))
    env = {**os.environ, "PIP_NO_CACHE_DIR": "1", "VLSWEEP_CACHE": str(work / "cache")}
    env.pop("VIRTUAL_ENV", None)
    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "cores": os.cpu_count(),
    }
    clone = work / "vlsweep"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    result["commit"] = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True, check=True
    ).stdout.strip()
    if args.skip_install:
        venv = args.skip_install.resolve()
    else:
        venv = clone / ".venv"
        result["install_seconds"] = {
            "venv": _timed([sys.executable, "-m", "venv", str(venv)], clone, env),
            "torch": _timed(
                [str(venv / "bin/pip"), "install", "-q", "torch==2.14.1", "torchvision==0.29.1"], clone, env
            ),
            "vlsweep": _timed([str(venv / "bin/pip"), "install", "-q", "-e", "."], clone, env),
        }
        result["install_seconds"]["total"] = sum(result["install_seconds"].values())
        print(json.dumps(result["install_seconds"]), flush=True)
    run_dir = work / "run"
    run_dir.mkdir()
    launch_env = {**env, "PATH": f"{venv / 'bin'}:{env['PATH']}"}
    started = time.time()
    out = subprocess.run(
        [str(venv / "bin/vlsweep"), "launch"], cwd=run_dir, env=launch_env, capture_output=True, text=True
    )
    ended = time.time()
    if out.returncode != 0:
        sys.exit(f"vlsweep launch failed ({out.returncode}):\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    result["launch_seconds"] = ended - started
    result["first_trial_running_seconds"] = _first_trial_running(run_dir / "vlsweep.db", venv) - started
    result["front_lr_ratios"] = _front_lr_ratios(run_dir / "vlsweep.db", venv)
    lines = out.stdout.splitlines()
    first = next(i for i, x in enumerate(lines) if x.startswith("Pareto front of 'demo'"))
    result["front_text"] = "\n".join(lines[first:])
    if args.front_json:  # how far the front's ends lie apart, against their noise
        subprocess.run(
            [
                str(venv / "bin/python"),
                str(clone / "benchmarks/front_noise.py"),
                "--json",
                str(args.front_json.resolve()),
            ],
            cwd=run_dir,
            env=launch_env,
            check=True,
            capture_output=True,
        )
    # The README's other command: one fine-tune of examples/demo-train.yaml.
    t0 = time.perf_counter()
    subprocess.run(
        [
            str(venv / "bin/vlsweep"),
            "train",
            str(clone / "examples/demo-train.yaml"),
            "-o",
            "train",
            "--eval-base",
        ],
        cwd=run_dir,
        env=launch_env,
        check=True,
        capture_output=True,
    )
    metrics = json.loads((run_dir / "train" / "metrics.json").read_text())
    result["train"] = {
        "seconds": time.perf_counter() - t0,
        "base": {k: metrics["base"][k] for k in ("cer", "iou", "iou_se")},
        **{k: metrics[k] for k in ("cer", "iou", "iou_se")},
    }
    print(json.dumps({k: v for k, v in result.items() if k != "front_text"}), flush=True)
    print(result["front_text"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")


def _first_trial_running(db: Path, venv: Path) -> float:
    """The earliest moment a trial's fine-tune was training (its first step done), as Unix
    time: each trial's ``train_started``, which its worker records."""
    code = (
        f"import json, optuna; s = optuna.load_study(study_name='demo', storage='sqlite:///{db}');"
        "print(json.dumps([t.user_attrs['train_started'] for t in s.get_trials()"
        " if 'train_started' in t.user_attrs]))"
    )
    out = subprocess.run([str(venv / "bin/python"), "-c", code], capture_output=True, text=True, check=True)
    return min(json.loads(out.stdout))


def _front_lr_ratios(db: Path, venv: Path) -> list[float]:
    """lr_llm / lr_projector of each trial on the front."""
    code = (
        f"import json, optuna; s = optuna.load_study(study_name='demo', storage='sqlite:///{db}');"
        "print(json.dumps([t.params['lr_llm'] / t.params['lr_projector'] for t in s.best_trials]))"
    )
    out = subprocess.run([str(venv / "bin/python"), "-c", code], capture_output=True, text=True, check=True)
    return sorted(json.loads(out.stdout))


def doc_readme_ratios(summary: dict[str, Any]) -> str:
    """The README's sentence on the front's learning rates (benchmarks/doc_tables.py)."""
    r = summary["front_lr_ratios"]
    return (
        f"Read the learning rates: every trial on the front trains the projector {r[0]:.0f} to "
        f"{r[-1]:.0f} times slower than the language model.\n"
    )


def doc_readme_front(summary: dict[str, Any]) -> str:
    """The README's front block (benchmarks/doc_tables.py), as `vlsweep launch` printed it."""
    return "```\n" + summary["front_text"] + "\n```\n"


def doc_readme_train(summary: dict[str, Any]) -> str:
    """The README's `vlsweep train` figures (benchmarks/doc_tables.py)."""
    t, base = summary["train"], summary["train"]["base"]
    return (
        f"It took {t['seconds']:.0f} s and moved CER from {base['cer']:.4f} (base) to {t['cer']:.4f} and IoU "
        f"from {base['iou']:.3f} to {t['iou']:.3f} (IoU's standard error {t['iou_se']:.3f}; "
        f"`python benchmarks/demo_run.py`, {summary['date']}).\n"
    )


def doc_readme_times(summary: dict[str, Any]) -> str:
    """The README's timing sentence (benchmarks/doc_tables.py)."""
    parts = []
    if "install_seconds" in summary:
        i = summary["install_seconds"]
        parts.append(
            f"the install took {i['total'] / 60:.1f} minutes ({i['torch']:.0f} s of it torch from the "
            f"machine's disk, {i['vlsweep']:.0f} s vlsweep and its dependencies from PyPI, no pip cache)"
        )
    parts.append(
        f"the first trial was training {summary['first_trial_running_seconds']:.0f} s after `vlsweep "
        f"launch` started, and the demo ended after {summary['launch_seconds'] / 60:.1f} minutes"
    )
    return (
        f"Measured from a fresh clone on a {summary['cores']}-core machine ({summary['date']}, commit "
        f"{summary['commit']}, `python benchmarks/demo_run.py`): " + "; ".join(parts) + ".\n"
    )


if __name__ == "__main__":
    main()
