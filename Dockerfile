# l2bn for a GPU node.
#
#   docker build -t l2bn .
#   mkdir -p data results
#   docker run --rm --gpus all --user "$(id -u):$(id -g)" \
#       -v "$PWD/data:/data" -v "$PWD/results:/results" \
#       l2bn sweep sweeps/paper.toml --optimizer adam --storage sqlite:////results/l2bn.db
#
# The base is the official PyTorch runtime image, pinned to an exact tag (torch 2.5.1, CUDA
# 12.4, cuDNN 9, Python 3.11). l2bn is installed on top of it with the `vision` and `postgres`
# extras, under a constraint that keeps the image's own CUDA build of torch (and torchvision):
# pip may not replace them with wheels from PyPI. The build fails if it did anyway.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    L2BN_DATA=/data \
    L2BN_STORAGE=sqlite:////results/l2bn.db

WORKDIR /opt/l2bn
COPY pyproject.toml README.md ./
COPY l2bn/ l2bn/
COPY sweeps/ sweeps/

# Keep the image's torch: its versions become pip constraints, checked again after the install.
COPY deploy/keep_torch.py /tmp/keep_torch.py
RUN python /tmp/keep_torch.py pin > /tmp/keep.txt \
 && pip install --constraint /tmp/keep.txt "/opt/l2bn[vision,postgres]" \
 && python /tmp/keep_torch.py check /tmp/keep.txt --cuda \
 && l2bn version

# A non-root user; data (CIFAR-10, read) and results (the SQLite study, JSON, figures) live on
# mounted volumes it owns.
RUN useradd --create-home --uid 1000 --user-group l2bn \
 && mkdir -p /data /results \
 && chown l2bn:l2bn /data /results
VOLUME ["/data", "/results"]
USER l2bn

ENTRYPOINT ["l2bn"]
CMD ["--help"]
