# l2bn for a GPU node.
#
#   docker build -t l2bn .
#   mkdir -p data results
#   docker run --rm --gpus all --user "$(id -u):$(id -g)" \
#       -v "$PWD/data:/data" -v "$PWD/results:/results" \
#       l2bn sweep sweeps/paper.toml --optimizer adam --storage sqlite:////results/l2bn.db
#
# The base is the official Python image at an exact release (Python 3.11.14, Debian 12
# bookworm). torch comes from PyPI at the version every test runs on: TORCH_VERSION below is
# scripts/setup.sh's default, and tests/test_docker.py fails when the two differ. PyPI's Linux
# x86_64 torch is a CUDA build (CUDA 13) that brings its CUDA libraries as nvidia-* wheels, so
# the image needs only the host's NVIDIA driver, ≥ 580 for CUDA 13 (and the NVIDIA Container
# Toolkit for --gpus). L2BN_DEVICE=cuda makes `device = auto` mean cuda: with an older driver
# (torch then sees no GPU) a run stops with one line naming the driver instead of training on
# the CPU. `--device cpu` (sweeps: --set device=cpu) or -e L2BN_DEVICE=auto undo it.
FROM python:3.11.14-slim-bookworm

ARG TORCH_VERSION=2.13.0

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    L2BN_DATA=/data \
    L2BN_STORAGE=sqlite:////results/l2bn.db \
    L2BN_DEVICE=cuda

WORKDIR /opt/l2bn
COPY pyproject.toml README.md ./
COPY l2bn/ l2bn/
COPY sweeps/ sweeps/
COPY deploy/check_torch.py /tmp/check_torch.py

# torch is pinned in the same resolve as l2bn and its `vision` and `postgres` extras, so pip
# picks the torchvision built for that torch and cannot move torch itself. The build fails if
# any installed requirement is unmet (pip check), or torch is not that version or not CUDA.
RUN pip install "torch==${TORCH_VERSION}" "/opt/l2bn[vision,postgres]" \
 && pip check \
 && python /tmp/check_torch.py "${TORCH_VERSION}" --cuda \
 && rm /tmp/check_torch.py \
 && l2bn version

# A non-root user, by number (Kubernetes' runAsNonRoot can only verify a numeric USER); data
# (CIFAR-10, read) and results (the SQLite study, JSON, figures) live on volumes it owns.
RUN useradd --create-home --uid 1000 --user-group l2bn \
 && mkdir -p /data /results \
 && chown l2bn:l2bn /data /results
VOLUME ["/data", "/results"]
USER 1000:1000

ENTRYPOINT ["l2bn"]
CMD ["--help"]
