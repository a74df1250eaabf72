"""The pipeline :class:`~instance_seg_ros.core.config.Config` of an ``isr`` subcommand (``bench``, ``eval``,
``eval --frames``): ``--params`` (a config / ROS params YAML), ``--set KEY=VALUE`` overrides, and the adjustments
that let untrained weights (``model.weights: none``) still yield detections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["build_config", "parse_set", "seeded_segmenter"]


def parse_set(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as ``{dotted key: value}``; each value is read as YAML (``0.7``, ``true``, ``off``).

    Raises:
        ConfigError: an item without ``=`` or without a key.
    """
    import yaml

    from ..core.config import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (e.g. model.backbone=resnet50_fpn), got {item!r}.")
        out[key.strip()] = yaml.safe_load(value)
    return out


def build_config(
    params: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    device: str | None = None,
    instances: int | None = None,
) -> tuple[Any, list[str]]:
    """The :class:`~instance_seg_ros.core.config.Config` and the notes about what was adjusted.

    ``params`` (a config / ROS params YAML; default: the built-in defaults, with the bundled model), then
    ``overrides`` (dotted keys), ``device`` (``model.device``) and ``instances`` (``model.max_instances``).
    Untrained weights get score and mask thresholds 0 and the support-plane check off unless overridden, so every
    detection counts.

    Raises:
        ConfigError: an unknown key or a bad value.
    """
    from ..core.config import Config

    notes: list[str] = []
    overrides = dict(overrides or {})
    cfg = Config.from_yaml(params) if params is not None else Config()
    if device is not None:
        overrides["model.device"] = device
    if instances is not None:
        overrides["model.max_instances"] = int(instances)
    flat = {**cfg.to_flat(), **overrides}
    if str(flat["model.weights"]).lower() == "none":
        for key in ("model.score_threshold", "model.mask_threshold"):
            if key not in overrides and flat[key] != 0.0:
                flat[key] = 0.0
                notes.append(f"untrained weights: {key}=0 so every detection counts")
        if "filter.support_plane" not in overrides and flat["filter.support_plane"] != "off":
            flat["filter.support_plane"] = "off"
            notes.append("untrained weights: filter.support_plane=off so every detection counts")
        if "model.mask_nms_threshold" not in overrides and flat["model.mask_nms_threshold"] != 1.0:
            flat["model.mask_nms_threshold"] = 1.0
            notes.append("untrained weights: model.mask_nms_threshold=1 so every detection counts")
        if "model.mask_nms" not in overrides and flat["model.mask_nms"] != "containment":
            flat["model.mask_nms"] = "containment"
            notes.append("untrained weights: model.mask_nms=containment so masks are left as the network made them")
        if "model.geometric_proposals" not in overrides and flat["model.geometric_proposals"] != "off":
            flat["model.geometric_proposals"] = "off"
            notes.append("untrained weights: model.geometric_proposals=off (the untrained network's proposals only)")
    return Config.from_flat(flat), notes


def seeded_segmenter(config: Any, seed: int, log: Any = None) -> Any:
    """A loaded :class:`~instance_seg_ros.core.pipeline.Segmenter` built after ``torch.manual_seed(seed)``, so
    untrained weights give the same model (and detections) on every run."""
    import torch

    from ..core.pipeline import Segmenter

    torch.manual_seed(int(seed))
    seg = Segmenter(config, log=log)
    seg.load()
    return seg
