"""``isr``: the project's command line (synth, train, eval, bench, record, demo, ...).

Each subcommand lives in its own module ``instance_seg_ros.tools.<name>`` exposing
``add_arguments(parser)`` and ``run(args) -> int``; this dispatcher only wires them up (it imports every
subcommand's module to add its arguments, and runs the chosen one).
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
    "grasps": ("instance_seg_ros.tools.grasps", "check Contact-GraspNet's grasps against scene geometry (sim / real)"),
    "replay": ("instance_seg_ros.tools.replay",
               "play a bag into a running instance_seg_node at a rate, record and score"),
    "soak": ("instance_seg_ros.tools.soak", "run the node for a long time under load and watch memory, fds, latency"),
    "weights": ("instance_seg_ros.tools.weights_tool", "inspect a weights file; convert .pt <-> .safetensors"),
}


def _load(name: str):
    """The module of subcommand ``name`` (only modules of the fixed table above are ever imported)."""
    module, _ = SUBCOMMANDS[name]
    return importlib.import_module(module)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isr", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        _load(name).add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(_load(args.command).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
