"""The cluster faults' outcomes, as the fault tests recorded them (docs/benchmarks/faults.json).

Not a benchmark of its own: the rows come from the tests that make each fault happen
(``tests/search/test_cluster_faults.py``, ``test_s3.py``, ``test_faults.py``), each
writing its row when ``VLSWEEP_FAULTS_JSON`` names the file (``.ci/run`` sets it). This
renders them for docs/cluster.md (``benchmarks/doc_tables.py``), or prints them:

    python benchmarks/faults.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FILE = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "faults.json"
COLUMNS = (
    "trials",
    "complete",
    "pruned",
    "failed",
    "requeued",
    "lost",
    "duplicated",
    "left_running",
    "resumed_from_step",
)


def doc_table(summary: dict[str, Any]) -> str:
    head = "| fault | " + " | ".join(c.replace("_", " ") for c in COLUMNS) + " |"
    lines = [head, "|---" * (len(COLUMNS) + 1) + "|"]
    for row in summary["faults"]:
        cells = ["-" if row.get(c) is None else str(row[c]) for c in COLUMNS]
        lines.append(f"| {row['fault']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(doc_table(json.loads(FILE.read_text())), end="")
