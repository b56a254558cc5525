#!/bin/sh
# Install deepserve's serving side (no torch) into the current Python environment.
# Used by the Dockerfile's runtime stages and by tests/deploy/test_image_steps.py, so the
# image's install steps are the ones the test runs.
#   sh deploy/docker/install.sh cpu|gpu   (run from the repository root)
set -eu
flavour="${1:-cpu}"
python -m pip install --no-cache-dir --upgrade pip
python -m pip install --no-cache-dir .
if [ "$flavour" = "gpu" ]; then
    # onnxruntime and onnxruntime-gpu provide the same module: keep only the CUDA build
    python -m pip uninstall -y onnxruntime
    python -m pip install --no-cache-dir "onnxruntime-gpu==1.31.1"
fi
python -m service.protocols.proto.build
