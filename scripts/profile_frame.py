#!/usr/bin/env python3
"""Profile what a default-config frame spends outside the network (issue 16), with cProfile.

The frame and the steps are ``isr bench``'s (:mod:`instance_seg_ros.tools.bench`): the driver messages decoded, the
Segmenter, the InstanceArray built. Prints two markdown tables: the functions of our package by cumulative time per
frame, and every function by own time per frame (torch's convolutions are the network; the rest is what to cut).

(py-spy does not sample processes on this machine: it reports only errors; cProfile's per-call overhead inflates
Python-heavy code a little, so read the shares, and take absolute stage times from ``isr bench``.)

    python scripts/profile_frame.py                       # default config, bundled model, 640x480
    python scripts/profile_frame.py --params instance_seg_ros/config/cpu_fast.yaml --runs 20
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=None, help="config YAML (default: built-in defaults, bundled model)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--instances", type=int, default=None, help="objects in the scene (default: the config's cap)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    from instance_seg_ros.tools.bench import _Bench
    from instance_seg_ros.tools.cli_config import build_config, parse_set

    cfg, _ = build_config(a.params, parse_set(a.set), instances=a.instances)
    instances = cfg.model.max_instances
    b = _Bench(cfg, a.width, a.height, instances, a.runs, a.warmup, a.seed, log=lambda m: print(m, file=sys.stderr))
    b.load()

    def frame() -> None:
        result = b.seg.process(*b.decode())
        if b.build_msg is not None:
            b.build_msg(result)

    for _ in range(a.warmup):
        frame()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(a.runs):
        frame()
    prof.disable()
    wall = (time.perf_counter() - t0) * 1e3 / a.runs
    st = pstats.Stats(prof)
    rows = []
    for (file, line, func), (_cc, ncalls, tt, ct, _callers) in st.stats.items():
        rows.append((file, line, func, ncalls / a.runs, tt * 1e3 / a.runs, ct * 1e3 / a.runs))

    def where(file: str, line: int, func: str) -> str:
        p = Path(file)
        if "instance_seg_ros" in p.parts:
            p = Path(*p.parts[len(p.parts) - 1 - p.parts[::-1].index("instance_seg_ros"):])
        elif file.startswith("~") or file.startswith("<"):
            return f"{func}"
        else:
            p = Path(*p.parts[-2:])
        return f"{p}:{line} {func}"

    print(f"# {a.width}x{a.height}, {instances} objects, {a.runs} profiled frames: {wall:.1f} ms per frame "
          "(under cProfile)\n")
    print("## Our package, by cumulative time per frame\n")
    print("| function | calls/frame | cumulative ms | own ms |\n|---|---|---|---|")
    ours = sorted((r for r in rows if "instance_seg_ros" in r[0]), key=lambda r: -r[5])
    for file, line, func, n, tt, ct in ours[:a.top]:
        print(f"| `{where(file, line, func)}` | {n:.0f} | {ct:.2f} | {tt:.2f} |")
    print("\n## Everything, by own time per frame\n")
    print("| function | calls/frame | own ms | share |\n|---|---|---|---|")
    for file, line, func, n, tt, _ct in sorted(rows, key=lambda r: -r[4])[:a.top]:
        print(f"| `{where(file, line, func)}` | {n:.0f} | {tt:.2f} | {tt / wall:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
