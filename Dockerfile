# spinenet (training, diagnosis, export) on a CUDA machine or a CPU.
#   docker build -t spinenet .
#   docker run --rm spinenet --help           # the image runs `spinenet`; README "Docker" has the full lines
# No CUDA base image: the torch 2.14.1 wheel from PyPI brings its own CUDA libraries (nvidia-* wheels), so
# the host needs only the NVIDIA driver and the NVIDIA Container Toolkit (`docker run --gpus all`).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    WANDB_MODE=offline \
    HOME=/home/spinenet

# A non-root user, spinenet (uid and gid 1000). `docker run --user "$(id -u):$(id -g)"` may run as any other
# uid: the home (caches of matplotlib, W&B, torch) and the working folder are writable by all, sticky like /tmp.
RUN groupadd --gid 1000 spinenet \
    && useradd --uid 1000 --gid 1000 --create-home spinenet \
    && chmod 1777 /home/spinenet \
    && install -d -m 1777 /work \
    && python -m venv /opt/venv

# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when the dependencies change.
# Extras: onnx (export, ONNX Runtime) and dicom (DICOM import and diagnosis).
COPY pyproject.toml /src/pyproject.toml
RUN python -c "import tomllib; p = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + [r for e in ('onnx', 'dicom') for r in p['optional-dependencies'][e]]))" \
    > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the code (its configs ship inside the wheel); `pip check` fails the build if a dependency is missing.
COPY . /src
RUN pip install --no-cache-dir --no-deps /src \
    && pip check

USER 1000:1000
# data/ and outputs/ (mounted here) are where spinenet reads and writes by default
WORKDIR /work
ENTRYPOINT ["spinenet"]
CMD ["--help"]
