#!/usr/bin/env bash
# torch 2.13.0 with a torchvision that works beside it (transformers' video processors need torchvision).
# PyPI's torchvision wheels are built against PyPI's default torch build; a local CPU build of torch
# (a +cpu wheel found through pip's find-links, as on some shared machines) makes torchvision fail to import
# ("operator torchvision::nms does not exist"). Where that happens, torch is installed again from the
# package index alone, ignoring local wheel folders.
# Usage: envs/install_torch.sh PYTHON
set -euo pipefail
python="$1"
pins=(torch==2.13.0 torchvision==0.28.0)
works() { "$python" -c "import torch, torchvision.ops; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)" \
    >/dev/null 2>&1; }
works && exit 0
"$python" -m pip install -q "${pins[@]}"
works && exit 0
echo "install_torch: torchvision does not load beside $("$python" -c 'import torch; print(torch.__version__)');" \
    "installing the package index's default torch build" >&2
"$python" -m pip uninstall -q -y torch torchvision
"$python" -m pip install -q --isolated "${pins[@]}"
works || { echo "install_torch: torchvision still does not load; see the output above" >&2; exit 1; }
