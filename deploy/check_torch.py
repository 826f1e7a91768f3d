"""Check the torch that pip installed in the image (used by the Dockerfile's build).

    python check_torch.py 2.13.0 --cuda

Exit 1, with one line per problem on stderr, unless the installed torch is exactly that
release (a local label such as ``+cu130`` is ignored) and, with ``--cuda``, a CUDA build: a
CPU-only torch would run on a GPU node without a word.
"""

from __future__ import annotations

import argparse
import sys


def release(version: str) -> str:
    return version.split("+", 1)[0]


def problems(expected: str, *, cuda: bool) -> list[str]:
    try:
        import torch
    except ImportError:
        return ["torch is not installed"]
    out = []
    if release(torch.__version__) != release(expected):
        out.append(f"torch is {torch.__version__}, not {expected}")
    if cuda and not torch.version.cuda:
        out.append(f"torch {torch.__version__} is not a CUDA build")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("version", help="the torch release the image must have, e.g. 2.13.0")
    parser.add_argument("--cuda", action="store_true", help="also require a CUDA build")
    args = parser.parse_args(argv)
    found = problems(args.version, cuda=args.cuda)
    for p in found:
        print(f"check_torch: {p}", file=sys.stderr)
    if found:
        return 1
    import torch

    print(f"check_torch: torch {torch.__version__} (CUDA {torch.version.cuda})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
