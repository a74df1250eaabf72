"""``isr``: the project's command line (synth, train, eval, bench, record, demo, ...).

Each subcommand lives in its own module ``instance_seg_ros.tools.<name>`` exposing
``add_arguments(parser)`` and ``run(args) -> int``; this dispatcher only wires them up, and imports
a subcommand's module (and so torch, pybullet, ...) only when that subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Keep in sync with README's "Tools" section.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("instance_seg_ros.tools.synth", "render synthetic tabletop scenes into a COCO-style amodal dataset"),
    "record": ("instance_seg_ros.tools.record", "write a rosbag2 of simulated RGB-D frames with ground truth"),
    "train": ("instance_seg_ros.tools.train", "train the amodal Mask R-CNN"),
    "eval": ("instance_seg_ros.tools.evaluate", "evaluate the pipeline (or recorded predictions) on a rosbag2"),
    "bench": ("instance_seg_ros.tools.bench", "benchmark the pipeline against a naive baseline"),
    "demo": ("instance_seg_ros.tools.demo", "run the simulated camera and the node, and report what was found"),
    "soak": ("instance_seg_ros.tools.soak", "run the node for a long time under load and watch memory, fds, latency"),
    "weights": ("instance_seg_ros.tools.weights_tool", "inspect a weights file; convert .pt <-> .safetensors"),
}


def _load(name: str):
    module, _ = SUBCOMMANDS[name]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise


def get_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(prog="isr", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    available: dict[str, object] = {}
    for name, (_, help_text) in SUBCOMMANDS.items():
        mod = _load(name)
        p = sub.add_parser(name, help=help_text if mod else f"(not yet available) {help_text}", description=help_text)
        if mod is None:
            p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            continue
        mod.add_arguments(p)
        available[name] = mod
    return parser, available


def main(argv: list[str] | None = None) -> int:
    parser, available = get_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command not in available:
        print(f"isr {args.command}: not yet available in this version of instance_seg_ros.", file=sys.stderr)
        return 3
    return int(available[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
