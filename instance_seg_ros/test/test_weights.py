"""Weights: checkpoint round trips, fp16 shipping files, safetensors files, refusal of anything that is not ours,
load_model specs, ``isr weights``."""

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
from instance_seg_ros.core.model.weights import (
    VERSION,
    coco_to_amodal_state_dict,
    save_state_dict,
    weights_file_kind,
)

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


def _image(seed: int = 0, channels: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(channels, H, W, generator=g)


def _outputs(model) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return model.eval()([_image(channels=model.in_channels)])[0]


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


# ---------------------------------------------------------------------------------------- safetensors
def _same_bits(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    from instance_seg_ros.tools.weights_tool import state_differences

    return not state_differences(a, b)


@pytest.mark.parametrize("half", [True, False])
def test_safetensors_round_trip_and_load_model(trained_like, tmp_path, half):
    model, meta = trained_like
    pt = save_weights(tmp_path / "w.pt", model, meta, half=half)
    st = save_weights(tmp_path / "w.safetensors", model, meta, half=half)
    assert weights_file_kind(pt) == "torch-zip" and weights_file_kind(st) == "safetensors"
    assert st.read_bytes()[8:9] == b"{" and not list(tmp_path.glob("*.tmp"))  # atomic: no temp file left
    s_pt, m_pt, _ = load_checkpoint(pt)
    s_st, m_st, extra = load_checkpoint(st)
    assert extra == {} and m_st == m_pt == meta
    assert _same_bits(s_pt, s_st)
    assert (s_st["roi_heads.box_head.fc6.weight"].dtype == torch.float16) is half
    loaded, meta2 = load_model(str(st))
    assert meta2 == meta and not loaded.training
    assert all(p.dtype == torch.float32 for p in loaded.parameters())  # fp16 comes back as fp32, as for .pt
    got, ref = _outputs(loaded), _outputs(load_model(str(pt))[0])
    assert len(ref["boxes"]) > 0
    for k in ("boxes", "labels", "scores", "masks", "amodal_masks", "occlusion"):
        assert torch.equal(ref[k], got[k]), k
    if not half:
        assert torch.equal(_outputs(model)["boxes"], got["boxes"])


def test_safetensors_metadata_is_str_json(trained_like, tmp_path):
    from safetensors import safe_open

    model, meta = trained_like
    st = save_weights(tmp_path / "w.safetensors", model, meta)
    with safe_open(str(st), framework="pt", device="cpu") as f:
        md = f.metadata()
    assert md["format"] == FORMAT and md["version"] == str(VERSION)
    assert ModelMeta.from_dict(json.loads(md["meta"])) == meta


def test_safetensors_save_handles_shared_and_strided_tensors(trained_like, tmp_path):
    _, meta = trained_like
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {"a": base, "tied": base, "row": base[1], "t": base.t(), "nan": torch.tensor([float("nan"), -0.0]),
             "empty": torch.zeros(0), "n": torch.tensor(7)}
    p = save_state_dict(tmp_path / "s.safetensors", state, meta)
    back, _, _ = load_checkpoint(p)
    assert _same_bits(state, back)
    assert back["a"].untyped_storage().data_ptr() != back["tied"].untyped_storage().data_ptr()
    with pytest.raises(WeightsError, match="JSON"):
        save_state_dict(tmp_path / "m.safetensors", state, ModelMeta.from_dict({**meta.to_dict(),
                                                                                "metrics": {"x": torch.ones(1)}}))
    assert not (tmp_path / "m.safetensors").exists()
    with pytest.raises(WeightsError, match="maps str to tensors"):
        save_state_dict(tmp_path / "x.pt", {"a": 1}, meta)


def test_training_checkpoint_stays_pt(trained_like, tmp_path):
    model, meta = trained_like
    with pytest.raises(WeightsError, match="save_weights"):
        save_checkpoint(tmp_path / "ckpt.safetensors", model, meta, epoch=1)
    assert not list(tmp_path.iterdir())


def test_container_is_decided_by_content(trained_like, tmp_path):
    model, meta = trained_like
    st = save_weights(tmp_path / "w.safetensors", model, meta)
    as_pt = tmp_path / "really_safetensors.pt"
    as_pt.write_bytes(st.read_bytes())
    state, m, _ = load_checkpoint(as_pt)  # safetensors named .pt: read as safetensors (no pickle)
    assert m == meta and _same_bits(state, load_checkpoint(st)[0])
    pt = save_weights(tmp_path / "w.pt", model, meta)
    as_st = tmp_path / "really_pt.safetensors"
    as_st.write_bytes(pt.read_bytes())
    with pytest.raises(WeightsError, match=r"really_pt.safetensors is named .safetensors but holds a torch zip"):
        load_checkpoint(as_st)  # a .safetensors name promises no pickle: never handed to torch.load
    link = tmp_path / "link.safetensors"
    link.symlink_to(pt)
    with pytest.raises(WeightsError, match="never unpickled"):
        load_checkpoint(link)


def _bad_safetensors(tmp_path: Path, kind: str, trained_like) -> Path:
    from safetensors.torch import save_file

    model, meta = trained_like
    p = tmp_path / f"{kind}.safetensors"
    tensors = {"w": torch.zeros(4)}
    ours = {"format": FORMAT, "version": str(VERSION), "meta": json.dumps(meta.to_dict())}
    if kind == "foreign":
        save_file(tensors, p)
    elif kind == "foreign_metadata":
        save_file(tensors, p, metadata={"format": "pt"})
    elif kind in ("truncated_data", "truncated_header"):
        good = save_weights(tmp_path / "good.safetensors", model, meta).read_bytes()
        n = int.from_bytes(good[:8], "little")
        p.write_bytes(good[: len(good) // 2] if kind == "truncated_data" else good[: 8 + n // 2])
    elif kind == "huge_header":
        p.write_bytes((2**40).to_bytes(8, "little") + b'{"__metadata__":{}}')
    elif kind == "bad_header_json":
        p.write_bytes((20).to_bytes(8, "little") + b"{not json at all!!!}" + bytes(16))
    elif kind == "wrong_format":
        save_file(tensors, p, metadata={**ours, "format": "someone/else"})
    elif kind in ("version_99", "version_text", "version_0"):
        save_file(tensors, p, metadata={**ours, "version": {"version_99": "99", "version_text": "one",
                                                            "version_0": "0"}[kind]})
    elif kind == "no_meta":
        save_file(tensors, p, metadata={k: v for k, v in ours.items() if k != "meta"})
    elif kind == "meta_not_json":
        save_file(tensors, p, metadata={**ours, "meta": "{classes: nope"})
    elif kind == "meta_invalid":
        save_file(tensors, p, metadata={**ours, "meta": json.dumps({"classes": ["x"]})})
    elif kind == "no_tensors":
        save_file({}, p, metadata=ours)
    elif kind == "random_bytes":
        p.write_bytes(np.random.default_rng(1).bytes(4096))
    elif kind == "empty_file":
        p.write_bytes(b"")
    return p


@pytest.mark.parametrize(
    "kind, reason",
    [("foreign", "not an instance_seg_ros weights file.*isr weights convert"),
     ("foreign_metadata", "not an instance_seg_ros weights file"), ("truncated_data", "not a loadable safetensors"),
     ("truncated_header", "truncated"), ("huge_header", "header declares 1099511627776 bytes"),
     ("bad_header_json", "not a loadable safetensors"), ("wrong_format", "'someone/else'"),
     ("version_99", "version 99"), ("version_text", "'version' must be a positive integer"),
     ("version_0", "positive integer"), ("no_meta", "no 'meta'"), ("meta_not_json", "not valid JSON"),
     ("meta_invalid", "classes"), ("no_tensors", "no tensors"), ("random_bytes", "no safetensors header"),
     ("empty_file", "no safetensors header")],
)
def test_bad_safetensors_file_is_refused(kind, reason, tmp_path, trained_like, monkeypatch):
    p = _bad_safetensors(tmp_path, kind, trained_like)

    def no_torch_load(*a, **k):
        raise AssertionError("torch.load called for a .safetensors file")

    monkeypatch.setattr(torch, "load", no_torch_load)
    with pytest.raises(WeightsError, match=reason) as err:
        load_checkpoint(p)
    assert p.name in str(err.value)
    with pytest.raises(WeightsError):
        load_model(str(p))


def test_loading_safetensors_never_calls_torch_load_or_pickle(trained_like, tmp_path, monkeypatch):
    model, meta = trained_like
    st = save_weights(tmp_path / "w.safetensors", model, meta)
    calls = []

    def forbidden(name):
        def f(*a, **k):
            calls.append(name)
            raise AssertionError(f"{name} called while loading safetensors")
        return f

    monkeypatch.setattr(torch, "load", forbidden("torch.load"))
    monkeypatch.setattr(pickle, "load", forbidden("pickle.load"))
    monkeypatch.setattr(pickle, "loads", forbidden("pickle.loads"))
    monkeypatch.setattr(pickle, "Unpickler", forbidden("pickle.Unpickler"))
    _, m = load_model(str(st))
    assert m == meta and not calls


def test_isr_weights_info_and_convert(trained_like, tmp_path, capsys):
    from instance_seg_ros.tools.cli import SUBCOMMANDS
    from instance_seg_ros.tools.weights_tool import main

    assert SUBCOMMANDS["weights"][0] == "instance_seg_ros.tools.weights_tool"
    model, meta = trained_like
    ckpt = save_checkpoint(tmp_path / "ckpt.pt", model, meta, epoch=3)
    st, back = tmp_path / "w.safetensors", tmp_path / "back.pt"
    assert main(["convert", str(ckpt), str(st)]) == 0
    out, err = capsys.readouterr()
    assert "bit-identical" in out and "epoch" in err  # training state is not carried over, and says so
    assert main(["convert", str(st), str(back)]) == 0
    capsys.readouterr()
    assert _same_bits(load_checkpoint(ckpt)[0], load_checkpoint(back)[0])
    assert load_checkpoint(back)[1] == meta and load_checkpoint(back)[2] == {}

    before = st.read_bytes()
    assert main(["convert", str(back), str(st)]) == 2  # no overwrite without --force
    out, err = capsys.readouterr()
    assert "--force" in err and len(err.strip().splitlines()) == 1 and st.read_bytes() == before
    assert main(["convert", str(back), str(st), "--force"]) == 0
    assert main(["convert", str(st), str(st), "--force"]) == 2
    assert main(["convert", str(back), str(tmp_path / "w.bin")]) == 2
    capsys.readouterr()

    assert main(["info", str(st)]) == 0
    out, _ = capsys.readouterr()
    for s in ("safetensors (no pickle)", "mobilenet_v3_large_fpn", "3: __background__, box, can", "unit test",
              "mask_ap 0.5", "float32", "parameters"):
        assert s in out, s
    assert main(["info", "--json", str(ckpt)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["container"] == "torch-zip" and d["extra_keys"] == ["epoch"] and d["meta"]["classes"][1] == "box"
    assert d["parameters"] == sum(p.numel() for p in model.parameters())
    assert d["dtypes"]["float32"]["tensors"] > 0

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    for argv in (["info", str(bad)], ["info", str(tmp_path / "missing.pt")], ["convert", str(bad), str(back)], []):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


@pytest.mark.skipif(not BUNDLED_WEIGHTS.is_file(), reason="no bundled model in this checkout")
def test_bundled_model_converted_to_safetensors_gives_identical_outputs(tmp_path, capsys):
    from instance_seg_ros.tools.weights_tool import main

    st = tmp_path / "amodal_maskrcnn.safetensors"
    assert main(["convert", str(BUNDLED_WEIGHTS), str(st)]) == 0
    capsys.readouterr()
    s_pt, m_pt, _ = load_checkpoint(BUNDLED_WEIGHTS)
    s_st, m_st, _ = load_checkpoint(st)
    assert m_st == m_pt and _same_bits(s_pt, s_st)
    a, _ = load_model("bundled")
    b, _ = load_model(str(st))
    ra, rb = _outputs(a), _outputs(b)
    for k in ("boxes", "labels", "scores", "masks", "amodal_masks", "occlusion"):
        assert torch.equal(ra[k], rb[k]), k
