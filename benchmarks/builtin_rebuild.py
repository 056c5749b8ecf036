"""Does a rebuild from the recipe meet the recipe's probe, as the shipped weights do?

Rebuilds each builtin base (``vlsweep.demo.rebuild``, the code path of ``vlsweep builtin
rebuild``) into a temporary directory, probes it and the shipped one on the same fresh
scenes, and says whether the rebuild's weights are identical to the shipped ones (they
are on the CPU kind, torch build and thread count the shipped ones were built with, and
differ elsewhere). Not part of CI: a rebuild takes minutes (about 4 for tiny-qwen2-vl
and 5 for tiny-llava on 2 cores); the test suite probes the shipped weights only.

    python benchmarks/builtin_rebuild.py [--names tiny-qwen2-vl,tiny-llava] \
        [--json docs/benchmarks/builtin_rebuild.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--names", default="tiny-qwen2-vl,tiny-llava")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from vlsweep.demo import RECIPES, probe, rebuild
    from vlsweep.demo.builtin import PROVENANCE, builtin_path

    rows: list[dict[str, Any]] = []
    for name in args.names.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / name
            info = rebuild(name, out, log=print)
            shipped = builtin_path(name)
            row = {
                "name": name,
                "seconds": info["seconds"],
                "machine": info["machine"],
                "rebuilt": info["probe"],
                "shipped": probe(shipped),
                "shipped_machine": json.loads((shipped / PROVENANCE).read_text())["machine"],
                "identical_weights": info["identical_to_shipped"],
                "thresholds": {
                    "max_cer": RECIPES[name].probe_max_cer,
                    "min_iou": RECIPES[name].probe_min_iou,
                },
            }
            row["shipped"]["meets_recipe"] = RECIPES[name].meets(row["shipped"])
        print(json.dumps(row), flush=True)
        rows.append(row)
    summary = {"rows": rows}
    print(doc_table(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {args.json}")


def doc_table(summary: dict[str, Any]) -> str:
    """The docs' table (benchmarks/doc_tables.py)."""
    lines = [
        "| base | built on | build | probe CER / IoU (± s.e.) | thresholds | meets | weights |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        t = r["thresholds"]
        for which, p in (("shipped", r["shipped"]), ("rebuilt", r["rebuilt"])):
            built = r["shipped_machine"] if which == "shipped" else r["machine"]
            took = "" if which == "shipped" else f"{r['seconds']:.0f} s"
            lines.append(
                f"| {r['name']} ({which}) | {built} | {took} | "
                f"{p['cer']:.3f} / {p['iou']:.3f} ± {p['iou_se']:.3f} | CER <= {t['max_cer']:g}, "
                f"IoU >= {t['min_iou']:g} | {'yes' if p['meets_recipe'] else 'no'} | "
                f"{'' if which == 'shipped' else ('identical' if r['identical_weights'] else 'differ')} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
