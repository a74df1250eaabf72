"""core/config.py's field specs: one declaration per parameter gives its spec, its default and its check."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from instance_seg_ros.core.config import Config, ConfigError, ParamSpec, Settings, field_specs, param_field


class _CameraError(ValueError):
    pass


@dataclass(frozen=True)
class _Camera(Settings):
    error = _CameraError
    label = "camera"

    rate: float = param_field(10.0, "Frames per second.", low=0.01, high=1000.0, dynamic=True)
    motion: str = param_field("static", "static or orbit.", choices=("static", "orbit"))
    qos_depth: int = param_field(5, "History depth.", low=1, high=100, name="qos.depth")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.motion == "orbit" and self.rate > 100:
            raise _CameraError("orbit needs rate <= 100.")


def test_specs_come_from_the_fields():
    assert _Camera.specs() == (
        ParamSpec("rate", 10.0, float, "Frames per second.", None, 0.01, 1000.0, True),
        ParamSpec("motion", "static", str, "static or orbit.", ("static", "orbit"), None, None, False),
        ParamSpec("qos.depth", 5, int, "History depth.", None, 1, 100, False),
    )
    assert {s.name: s.default for s in _Camera.specs()} == _Camera().to_flat()


def test_from_flat_widens_validates_and_round_trips():
    s = _Camera.from_flat({"rate": 5, "qos.depth": 3})
    assert s.rate == 5.0 and isinstance(s.rate, float) and s.qos_depth == 3
    assert _Camera.from_flat(s.to_flat()) == s
    with pytest.raises(_CameraError, match=r"Unknown camera parameter\(s\) colour, qos_depth. Known: rate, motion, "
                                           r"qos\.depth\."):
        _Camera.from_flat({"qos_depth": 3, "colour": 1})
    with pytest.raises(_CameraError, match=r"qos\.depth must be within \[1, 100\]"):
        _Camera(qos_depth=0)  # direct construction is checked too
    with pytest.raises(_CameraError, match="must be one of static, orbit"):
        _Camera.from_flat({"motion": "spin"})
    with pytest.raises(_CameraError, match="orbit needs"):
        _Camera.from_flat({"motion": "orbit", "rate": 500.0})


def test_config_sections_use_the_same_field_specs():
    from instance_seg_ros.core.config import SyncConfig

    assert [s.name for s in field_specs(SyncConfig, "sync.")] == ["sync.slop", "sync.queue_size", "sync.max_age"]
    assert list(field_specs(SyncConfig, "sync.")) == [s for s in Config.specs() if s.name.startswith("sync.")]
    with pytest.raises(ConfigError):
        Config.from_flat({"sync.queue_size": 0})
