#!/usr/bin/env bash
# The trainers the exports target, each in a venv of its own (they pin their own
# transformers and peft), cached under ~/.cache/vlsweep/venvs so CI installs them once.
# Prints the environment the trainer tests read. Usage: eval "$(bash .ci/trainers.sh)"
set -euo pipefail
ROOT=${VLSWEEP_VENVS:-$HOME/.cache/vlsweep/venvs}
mkdir -p "$ROOT"
make_venv() {  # name, packages...
    local name=$1; shift
    local dir=$ROOT/$name stamp="torch==2.14.1 torchvision==0.29.1 $*"
    if [ "$(cat "$dir/.vlsweep-stamp" 2>/dev/null)" != "$stamp" ]; then
        rm -rf "$dir"
        python3 -m venv "$dir"
        "$dir/bin/pip" install -q --upgrade pip >&2
        # torch first, pinned, as for vlsweep itself (a bare torch may pull a multi-GB build).
        "$dir/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 >&2
        "$dir/bin/pip" install -q "$@" >&2
        echo "$stamp" > "$dir/.vlsweep-stamp"
    fi
}
# bitsandbytes: the QLoRA exports (model.quantization) load their base through it.
make_venv llamafactory llamafactory==0.9.5 bitsandbytes==0.50.2
# ms-swift needs qwen_vl_utils for Qwen models (it imports it for their images).
make_venv swift ms-swift==4.6.0 qwen_vl_utils bitsandbytes==0.50.2
echo "export VLSWEEP_LLAMAFACTORY=$ROOT/llamafactory/bin/llamafactory-cli"
echo "export VLSWEEP_SWIFT=$ROOT/swift/bin/swift"
