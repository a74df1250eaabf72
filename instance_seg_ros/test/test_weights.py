"""Weights: checkpoint round trips, fp16 shipping files, refusal of anything that is not ours, load_model specs."""

from __future__ import annotations

import argparse
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from instance_seg_ros.core.model import (
    BUNDLED_WEIGHTS,
    FORMAT,
    ModelMeta,
    WeightsError,
    build_amodal_maskrcnn,
    load_checkpoint,
    load_model,
    save_checkpoint,
    save_weights,
)
from instance_seg_ros.core.model.weights import coco_to_amodal_state_dict

H, W = 96, 128


@pytest.fixture(autouse=True, scope="module")
def _two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained_like():
    """A small model whose weights are not the builder's init (so loading must really copy them)."""
    torch.manual_seed(0)
    model = build_amodal_maskrcnn(backbone="mobilenet_v3_large_fpn", min_size=H, max_size=W, box_score_thresh=0.0,
                                  box_detections_per_img=6, num_classes=3)
    with torch.no_grad():
        for p in model.roi_heads.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.eval()
    meta = ModelMeta.from_model(model, classes=["__background__", "box", "can"], training_data="unit test",
                                metrics={"mask_ap": 0.5})
    return model, meta


def _image(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, H, W, generator=g)


def _outputs(model) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return model.eval()([_image()])[0]


def test_meta_is_json_and_round_trips(trained_like):
    _, meta = trained_like
    d = meta.to_dict()
    again = ModelMeta.from_dict(json.loads(json.dumps(d)))
    assert again == meta
    assert again.num_classes == 3 and again.builder_kwargs["backbone"] == "mobilenet_v3_large_fpn"
    assert meta.torch_version == torch.__version__ and meta.created
    with pytest.raises(WeightsError, match="__background__"):
        ModelMeta(classes=["object", "thing"])
    with pytest.raises(WeightsError, match="backbone"):
        ModelMeta(classes=["__background__", "object"], backbone="vgg")
    rgbd = ModelMeta(classes=["__background__", "object"], input_mode="rgbd")
    assert rgbd.depth_normalization == {"max_m": 2.0, "mean": 0.5, "std": 0.25}


def test_checkpoint_round_trip_gives_identical_outputs(trained_like, tmp_path):
    model, meta = trained_like
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    args = argparse.Namespace(epochs=3, data=Path("/data/x"), lr=0.1)
    path = save_checkpoint(tmp_path / "ckpt.pt", model, meta, optimizer=opt.state_dict(), args=args, epoch=2)
    state, meta2, extra = load_checkpoint(path)
    assert meta2 == meta
    assert extra["epoch"] == 2 and extra["args"] == {"epochs": 3, "data": "/data/x", "lr": 0.1}
    assert "optimizer" in extra
    loaded, meta3 = load_model(str(path))
    assert meta3.classes == ["__background__", "box", "can"]
    ref, got = _outputs(model), _outputs(loaded)
    assert len(ref["boxes"]) > 0
    for k in ("boxes", "labels", "scores", "masks", "amodal_masks", "occlusion"):
        assert torch.equal(ref[k], got[k]), k
    assert not loaded.training


def test_fp16_shipping_file(trained_like, tmp_path):
    model, meta = trained_like
    full = save_checkpoint(tmp_path / "full.pt", model, meta)
    half = save_weights(tmp_path / "half.pt", model, meta)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    state, _, extra = load_checkpoint(half)
    assert extra == {}
    dtypes = {k: v.dtype for k, v in state.items()}
    assert dtypes["roi_heads.box_head.fc6.weight"] == torch.float16
    assert all(v == torch.float32 for k, v in dtypes.items() if k.endswith("running_var"))
    loaded, _ = load_model(str(half))
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    ref, got = _outputs(model), _outputs(loaded)
    # fp16 rounding perturbs the untrained model's scores slightly; the top boxes agree
    assert torch.allclose(ref["boxes"][:2], got["boxes"][:2], atol=2.0)


class _Evil:
    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _not_weights(tmp_path: Path, kind: str, trained_like) -> Path:
    p = tmp_path / f"{kind}.pt"
    if kind == "evil_pickle":
        evil = _Evil()
        evil.marker = tmp_path / "PWNED"
        p.write_bytes(pickle.dumps(evil, protocol=2))
    elif kind == "evil_torch_save":
        evil = _Evil()
        evil.marker = tmp_path / "PWNED"
        torch.save({"format": FORMAT, "version": 1, "meta": evil, "model": {}}, p)
    elif kind == "random_bytes":
        p.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "truncated":
        model, meta = trained_like
        good = save_weights(tmp_path / "good.pt", model, meta)
        p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "no_format_key":
        torch.save({"model": {"w": torch.zeros(2)}}, p)
    elif kind == "bare_state_dict":
        torch.save(trained_like[0].state_dict(), p)
    elif kind == "wrong_version":
        torch.save({"format": FORMAT, "version": 99, "meta": {}, "model": {"w": torch.zeros(1)}}, p)
    elif kind == "empty_model":
        torch.save({"format": FORMAT, "version": 1, "meta": trained_like[1].to_dict(), "model": {}}, p)
    elif kind == "bad_meta":
        torch.save({"format": FORMAT, "version": 1, "meta": {"classes": ["x"]}, "model": {"w": torch.zeros(1)}}, p)
    elif kind == "directory":
        p.mkdir()
    elif kind == "missing":
        pass
    elif kind == "empty_file":
        p.write_bytes(b"")
    return p


@pytest.mark.parametrize(
    "kind",
    ["evil_pickle", "evil_torch_save", "random_bytes", "truncated", "no_format_key", "bare_state_dict",
     "wrong_version", "empty_model", "bad_meta", "directory", "missing", "empty_file"],
)
def test_not_a_weights_file_is_refused(kind, tmp_path, trained_like):
    p = _not_weights(tmp_path, kind, trained_like)
    with pytest.raises(WeightsError) as err:
        load_checkpoint(p)
    assert p.name in str(err.value)
    with pytest.raises(WeightsError):
        load_model(str(p))
    assert not (tmp_path / "PWNED").exists(), "unpickling ran code"


def test_state_that_does_not_fit_its_meta_is_refused(trained_like, tmp_path):
    model, meta = trained_like
    wrong = ModelMeta.from_dict({**meta.to_dict(), "builder_kwargs": {**meta.builder_kwargs,
                                                                      "representation_size": 256}})
    p = save_checkpoint(tmp_path / "mismatch.pt", model, wrong)
    with pytest.raises(WeightsError, match="mismatch.pt"):
        load_model(str(p))


def test_save_refuses_unstorable_extras(trained_like, tmp_path):
    model, meta = trained_like
    with pytest.raises(WeightsError, match="args"):
        save_checkpoint(tmp_path / "x.pt", model, meta, args={"fn": print})
    with pytest.raises(WeightsError, match="reserved"):
        save_checkpoint(tmp_path / "x.pt", model, meta, format="mine")
    with pytest.raises(WeightsError, match="directory"):
        save_weights(tmp_path, model, meta)
    assert not (tmp_path / "x.pt").exists()


def test_untrained_model_is_the_same_in_every_run_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a, _ = load_model("none", backbone="resnet18_fpn")
    after = torch.rand(3)
    b, _ = load_model("none", backbone="resnet18_fpn")
    assert torch.equal(before, after)  # the caller's random stream is untouched
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_load_model_specs(caplog):
    logs = []
    model, meta = load_model("none", backbone="efficientnet_lite0_fpn", input_mode="rgbd", log=logs.append)
    assert meta.backbone == "efficientnet_lite0_fpn" and model.input_mode == "rgbd" and not model.training
    assert any("UNTRAINED" in m for m in logs)
    with caplog.at_level(logging.WARNING):
        load_model("none", backbone="mobilenet_v3_large_fpn")
    assert "UNTRAINED" in caplog.text
    if BUNDLED_WEIGHTS.is_file():
        _, bundled_meta = load_model("bundled")
        assert bundled_meta.classes[0] == "__background__"
    else:
        with pytest.raises(WeightsError, match="No bundled model"):
            load_model("bundled")
    with pytest.raises(WeightsError, match="does not exist"):
        load_model("/nonexistent/model.pt")
    with pytest.raises(WeightsError):
        load_model("")


def test_coco_state_dict_conversion():
    """The 'coco' spec needs a download; its conversion is checked on a randomly initialised torchvision
    Mask R-CNN (same keys and shapes as the COCO weights)."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    ours = build_amodal_maskrcnn(backbone="resnet50_fpn", num_classes=91, frozen_bn=True)
    converted = coco_to_amodal_state_dict(tv.state_dict(), ours)
    ours.load_state_dict(converted, strict=True)
    sd = ours.state_dict()
    for k, v in tv.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(sd[k], v), k
    assert torch.equal(sd["roi_heads.amodal_mask_head.0.0.weight"], sd["roi_heads.mask_head.0.0.weight"])
    assert torch.equal(sd["roi_heads.amodal_mask_predictor.mask_fcn_logits.weight"],
                       sd["roi_heads.mask_predictor.mask_fcn_logits.weight"])
