#!/usr/bin/env bash
# Run HERE (a machine with PyPI): download into benchmarks/wheels/ the wheels a GPU machine without internet
# needs to install mmtok from the working tree (benchmarks/gpu.sh installs from them with --no-index).
#
# The GPU image has PyTorch 2.11 and transformers 5.17 (our floor is 5.24), huggingface-hub 1.33, tokenizers
# 0.23.2, safetensors 0.8.0, numpy, pillow, typer, rich, pyyaml. So: transformers 5.24.0, plus the wheels of
# its and our requirements that such an image may hold too old (versions this project's suite passes with),
# each without its own dependencies. Never torch, numpy or pillow (present there, and large). About 20 MB;
# the device tool carries at most 64 MiB of working tree.
#
#   bash benchmarks/fetch_wheels.sh            # Python 3.10, 3.11 and 3.12 (the GPU image has 3.12)
#   PY_VERSIONS="3.12" bash benchmarks/fetch_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
dest=benchmarks/wheels
mkdir -p "$dest"
PIP=${PIP:-python3 -m pip}

# pure Python (py3-none-any) or abi3: one wheel serves every Python version
portable=(
    transformers==5.24.0      # our floor; the image's 5.17 fails Qwen3.5 and Gemma 3
    tokenizers==0.23.3        # transformers 5.24: >=0.23.1,<0.24
    safetensors==0.8.0        # transformers 5.24: >=0.8.0
    huggingface-hub==1.33.0   # transformers 5.24: >=1.31,<3 (the image's own version, in case it is missing)
    typer==0.29.2             # ours: >=0.12
    rich==15.0.0              # ours: >=13
    tqdm==4.70.1              # transformers: >=4.60
)
# compiled per Python version
compiled=(
    "regex>=2025.10.22"       # transformers 5.24 (the newest release for each Python version)
    "pyyaml>=6,<7"            # ours
)
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

for req in "${portable[@]}"; do
    $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
        -d "$dest" "${req%%#*}"
done
for py in ${PY_VERSIONS:-3.10 3.11 3.12}; do
    for req in "${compiled[@]}"; do
        $PIP download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp "${platforms[@]}" \
            -d "$dest" "${req%%#*}"
    done
done
ls -1 "$dest"
du -sh "$dest"
