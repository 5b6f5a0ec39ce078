# spinenet on a CUDA machine. Build: docker build -t spinenet .
# Run:   docker run --gpus all --shm-size 8g -v $PWD/data:/work/data -v $PWD/outputs:/work/outputs \
#          spinenet spinenet train experiment=seg/sustersic2022_sagittal trainer=gpu
# torch 2.14.1 from PyPI is a CUDA 13 build; the image only needs the driver from the host.
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 WANDB_MODE=offline
RUN apt-get update && apt-get install -y --no-install-recommends software-properties-common \
    && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv make libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /work
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# dependencies first (cached layer), then the code
COPY pyproject.toml README.md ./
RUN mkdir spinenet && touch spinenet/__init__.py && pip install --upgrade pip && pip install '.' && pip uninstall -y spinenet-mri
COPY . .
RUN pip install --no-deps '.'
CMD ["spinenet", "--help"]
