"""Keep the base image's own torch when pip installs l2bn on top of it (used by the Dockerfile).

    python keep_torch.py pin > keep.txt      # "torch==X" (and torchvision) as pip constraints
    pip install --constraint keep.txt ...
    python keep_torch.py check keep.txt --cuda   # fails if pip replaced them, or torch lacks CUDA

Local version labels (``+cu124``) are dropped from the pins: ``torch==2.5.1`` matches
``2.5.1+cu124``, and a pin pip cannot satisfy from what is installed makes it fail rather than
download another torch.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

PACKAGES = ("torch", "torchvision")


def installed() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        if importlib.util.find_spec(name) is not None:
            out[name] = str(importlib.import_module(name).__version__).split("+")[0]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("pin", help="print constraints that keep the installed versions")
    check = sub.add_parser("check", help="verify the versions in a constraints file")
    check.add_argument("constraints")
    check.add_argument("--cuda", action="store_true", help="also require a CUDA build of torch")
    args = parser.parse_args(argv)
    now = installed()
    if "torch" not in now:
        print("keep_torch: torch is not installed in this image", file=sys.stderr)
        return 1
    if args.command == "pin":
        for name, version in now.items():
            print(f"{name}=={version}")
        return 0
    with open(args.constraints, encoding="utf-8") as f:
        pinned = dict(line.strip().split("==", 1) for line in f if "==" in line)
    changed = [f"{n} {v} -> {now.get(n)}" for n, v in pinned.items() if now.get(n) != v]
    if changed:
        print(f"keep_torch: pip replaced {', '.join(changed)}", file=sys.stderr)
        return 1
    if args.cuda:
        import torch

        if not torch.version.cuda:
            print(f"keep_torch: torch {torch.__version__} has no CUDA", file=sys.stderr)
            return 1
    print("keep_torch: kept " + ", ".join(f"{n}=={v}" for n, v in now.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
