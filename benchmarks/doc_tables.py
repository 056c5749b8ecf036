"""The docs' measured figures, made from the files the benchmarks wrote (never typed).

Each benchmark writes its results as JSON into docs/benchmarks/; a doc shows them in a
block between two markers, ``<!-- table: NAME -->`` and ``<!-- /table -->``, and NAME
picks the renderer below (each lives in its benchmark's module, next to the code that
wrote the file). This rewrites every marked block from its file, or with ``--check``
only says which blocks differ (the test suite runs the check, so a doc cannot drift from
its file):

    python benchmarks/doc_tables.py            # rewrite the blocks
    python benchmarks/doc_tables.py --check    # exit 1 when a block differs from its file
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FILES = ROOT / "docs" / "benchmarks"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- table: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)

# Block name -> (summary file under docs/benchmarks/, module, function(summary) -> markdown).
TABLES: dict[str, tuple[str, str, str]] = {
    "module_lr.scan": ("module_lr.json", "lr_tradeoff", "doc_scan"),
    "module_lr.scan_verdict": ("module_lr.json", "lr_tradeoff", "doc_scan_verdict"),
    "module_lr.tied": ("module_lr.json", "lr_tradeoff", "doc_tied"),
    "module_lr.tied_verdict": ("module_lr.json", "lr_tradeoff", "doc_tied_verdict"),
    "strategies.all": ("strategies_front.json", "strategies_front", "doc_all"),
    "strategies.loss_balance": ("strategies_front.json", "strategies_front", "doc_loss_balance"),
    "early_signal": ("early_signal.json", "early_signal", "doc_table"),
    "early_signal_pilot": ("early_signal_pilot.json", "early_signal", "doc_table"),
    "mf_replay": ("mf_replay.json", "mf_replay.report", "doc_table"),
    "mf_replay_grace20": ("mf_replay_grace20.json", "mf_replay.report", "doc_table"),
    "trial_overhead": ("trial_overhead.json", "trial_overhead", "doc_table"),
    "storage_cost": ("storage_cost.json", "storage_cost", "doc_table"),
    "scenario_pilots": ("scenario_pilots.json", "scenario_pilots", "doc_table"),
    "cpu_kinds": ("cpu_kinds.json", "cpu_kinds", "doc_table"),
    "builtin_rebuild": ("builtin_rebuild.json", "builtin_rebuild", "doc_table"),
    "demo_run.front": ("demo_run.json", "demo_run", "doc_readme_front"),
    "demo_run.times": ("demo_run.json", "demo_run", "doc_readme_times"),
    "demo_run.train": ("demo_run.json", "demo_run", "doc_readme_train"),
    "demo_run.ratios": ("demo_run.json", "demo_run", "doc_readme_ratios"),
    "demo_front": ("demo_front.json", "front_noise", "doc_table"),
    "train_loop": ("train_loop.json", "train_loop", "doc_table"),
    "export_fidelity": ("export_fidelity.json", "export_fidelity", "doc_table"),
    "swift_fidelity": ("swift_fidelity.json", "swift_fidelity", "doc_table"),
    "memory_estimate": ("memory_estimate.json", "memory_estimate", "doc_table"),
    "fit_examples": ("fit_examples.json", "fit_examples", "doc_block"),
    "fit_examples.multi_worker": ("fit_examples.json", "fit_examples", "doc_block_multi"),
    "multi_worker": ("multi_worker.json", "multi_worker", "doc_table"),
    "faults": ("faults.json", "faults", "doc_table"),
    "transfer.rank": ("transfer.json", "transfer", "doc_rank"),
    "transfer.scan": ("transfer.json", "transfer", "doc_scan"),
    "transfer.arms": ("transfer.json", "transfer", "doc_arms"),
    "transfer.family_cost": ("transfer.json", "transfer", "doc_family_cost"),
    "known_fronts": ("known_fronts_base.json", "known_fronts", "doc_table"),
}


def renderer(name: str) -> Callable[[], str]:
    file, module, function = TABLES[name]
    sys.path.insert(0, str(Path(__file__).parent))
    render: Callable[[Any], str] = getattr(importlib.import_module(module), function)
    return lambda: render(json.loads((FILES / file).read_text())).rstrip("\n") + "\n"


def refresh(text: str, cache: dict[str, str]) -> str:
    """``text`` with every marked block made anew from its file."""

    def block(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in TABLES:
            raise SystemExit(f"error: unknown table {name!r}; known: {sorted(TABLES)}")
        if name not in cache:
            cache[name] = renderer(name)()
        return m.group(1) + cache[name] + m.group(4)

    return BLOCK.sub(block, text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only report blocks that differ from their file")
    args = ap.parse_args()
    cache: dict[str, str] = {}
    stale = []
    for doc in DOCS:
        text = doc.read_text()
        new = refresh(text, cache)
        if new != text:
            stale.append(doc)
            if not args.check:
                doc.write_text(new)
    verb = "differ from their files" if args.check else "rewritten"
    for doc in stale:
        print(f"{doc.relative_to(ROOT)}: tables {verb}")
    if args.check and stale:
        sys.exit(1)


if __name__ == "__main__":
    main()
