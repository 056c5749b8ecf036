"""The worker's view of paths and failures (the parts that need no Ray)."""

from __future__ import annotations

import socket
from pathlib import Path

import torch

from vlsweep.errors import UserInputError
from vlsweep.search.worker import describe_failure, localize


def test_a_path_this_node_sees_is_used_as_is(tmp_path: Path) -> None:
    f = tmp_path / "job" / "data" / "train.jsonl"
    f.parent.mkdir(parents=True)
    f.write_text("")
    assert localize(str(f), str(tmp_path / "job"), start_dir="/elsewhere") == str(f)


def test_a_path_in_the_drivers_directory_is_found_in_this_nodes_copy(tmp_path: Path) -> None:
    """`ray job submit --working-dir`: each node has the job's files under its own path."""
    head_copy, node_copy = tmp_path / "head" / "pkg", tmp_path / "node2" / "pkg"
    (node_copy / "data").mkdir(parents=True)
    (node_copy / "data" / "train.jsonl").write_text("")
    driver_path = str(head_copy / "data" / "train.jsonl")  # not on this node
    assert localize(driver_path, str(head_copy), start_dir=str(node_copy)) == str(
        node_copy / "data" / "train.jsonl"
    )
    # Outside the driver's directory, or missing on this node too: unchanged, so the
    # trial's error names the path the config meant.
    assert localize("/nowhere/x.jsonl", str(head_copy), start_dir=str(node_copy)) == "/nowhere/x.jsonl"
    missing = str(head_copy / "data" / "val.jsonl")
    assert localize(missing, str(head_copy), start_dir=str(node_copy)) == missing


def test_a_path_a_worker_cannot_read_names_the_node() -> None:
    err = UserInputError("/data/train.jsonl: dataset file does not exist")
    text = describe_failure(err)
    assert text.startswith(f"on node {socket.gethostname()} (")
    assert text.endswith("UserInputError: /data/train.jsonl: dataset file does not exist")


def test_out_of_memory_says_what_to_change() -> None:
    text = describe_failure(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert text.startswith(
        "out of memory: CUDA out of memory. Tried to allocate 2.00 GiB (lower budget.batch_size"
    )
    assert describe_failure(ValueError("bad")) == "ValueError: bad"
