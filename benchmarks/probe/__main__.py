"""``python -m benchmarks.probe NAME [--tree DIR] [--backend B] [-p NAME=VALUE]``: run one reproduction
and print its figures as JSON (see ``benchmarks/probe/__init__.py``)."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
from pathlib import Path

import benchmarks.probe as package
from benchmarks.probe import PROBES

for info in pkgutil.iter_modules(package.__path__):
    if info.name not in ("common", "__main__"):
        importlib.import_module(f"benchmarks.probe.{info.name}")

parser = argparse.ArgumentParser(prog="python -m benchmarks.probe", description=__doc__)
parser.add_argument("name", choices=sorted(PROBES), help="; ".join(f"{n}: {d}" for n, (_, d) in sorted(PROBES.items())))
parser.add_argument("--tree", type=Path, default=None, help="run the server from this source tree")
parser.add_argument("--backend", default="epoll")
parser.add_argument(
    "-p", "--param", action="append", default=[], metavar="NAME=VALUE", help="a probe's own parameter (a number)"
)
args = parser.parse_args()
params = {name: float(value) if "." in value else int(value) for name, value in (p.split("=", 1) for p in args.param)}
fn, _ = PROBES[args.name]
figures = fn(tree=args.tree, backend=args.backend, **params)
print(json.dumps({"probe": args.name, "backend": args.backend, **params, **figures}, indent=2))
