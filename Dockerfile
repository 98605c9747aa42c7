# plm-speedrun for NVIDIA GPU machines.
#
#   docker build -t plm-speedrun .
#   docker run --rm --gpus all --ipc=host plm-speedrun                                   # the demo (default CMD)
#   docker run --rm --gpus all -v /path/to/shared:/home/plm/shared plm-speedrun python -m pytest -q tests/
#   docker run --rm --gpus all --ipc=host -v "$PWD/data:/home/plm/app/data" -v "$PWD/logs:/home/plm/app/logs" \
#       plm-speedrun torchrun --standalone --nproc_per_node=8 train.py --yaml_path example_yamls/default.yaml
#   DOCKER_IMAGE=plm-speedrun ./run_experiments.sh                                       # every experiments/*.yaml
#
# Tokens are never baked in: pass them at run time by name only (`-e HF_TOKEN -e WANDB_API_KEY`), never as values.
# The torch==2.13.0 wheel from PyPI bundles its own CUDA 13 runtime, cuDNN and NCCL, so the base image only has to
# match the host driver (CUDA 13 needs driver >= 580); the base is pinned by tag, the Python packages by version.
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential git \
    && rm -rf /var/lib/apt/lists/*

# A non-root user owns the virtual environment and the code.
RUN useradd --create-home --shell /bin/bash plm
USER plm
WORKDIR /home/plm/app
ENV VIRTUAL_ENV=/home/plm/venv PATH=/home/plm/venv/bin:$PATH
RUN python3 -m venv "$VIRTUAL_ENV"

# Dependencies first (cached layer): exactly requirements.txt, torch pinned there (torch==2.13.0, CUDA build from
# PyPI), plus the optional integrations at pinned versions.
COPY --chown=plm:plm requirements.txt .
RUN pip install -r requirements.txt wandb==0.31.0 transformers==5.24.0

COPY --chown=plm:plm . .

# Default: the README's main job on the embedded demo data (the tests also need ../shared mounted, see above).
CMD ["python", "train.py", "--yaml_path", "example_yamls/cpu_demo.yaml"]
