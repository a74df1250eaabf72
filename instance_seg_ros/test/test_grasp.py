"""Contact-GraspNet adapter (instance_seg_ros.grasp): point operations, scene geometry, grasps on a simulated frame.

The point operations and the adapter's geometry run everywhere (plain torch / numpy); the network tests skip with
the reason where the optional extra (``make setup-grasp``) is not installed.
"""

from __future__ import annotations

import ast
import importlib.machinery
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from instance_seg_ros.core.types import Intrinsics
from instance_seg_ros.grasp import GRIPPER_DEPTH, MAX_WIDTH, GraspError, GraspExtraMissing
from instance_seg_ros.grasp import point_ops as po
from instance_seg_ros.grasp.planner import load_network, local_region, scene_points

GRASP_DIR = Path(po.__file__).parent


# ------------------------------------------------------------------ brute-force references (torch-cluster semantics)
def _sq(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).sum())


def ref_fps(pos: torch.Tensor, n: int, start: int) -> list[int]:
    """Farthest point sampling: next = the point with the largest distance to the chosen set, lowest index on ties."""
    d = [_sq(p, pos[start]) for p in pos]
    out = [start]
    for _ in range(n - 1):
        best = max(range(len(pos)), key=lambda i: (d[i], -i))
        out.append(best)
        d = [min(d[i], _sq(pos[i], pos[best])) for i in range(len(pos))]
    return out


def ref_radius(x, y, r, bx, by, max_num) -> list[tuple[int, int]]:
    """Per query: the points of its example closer than r (strict), the first max_num in index order."""
    out = []
    for i in range(len(y)):
        found = [j for j in range(len(x)) if bx[j] == by[i] and _sq(x[j], y[i]) < r * r]
        out += [(i, j) for j in found[:max_num]]
    return out


def ref_knn(x, y, k, bx, by) -> list[set[int]]:
    out = []
    for i in range(len(y)):
        cand = sorted((_sq(x[j], y[i]), j) for j in range(len(x)) if bx[j] == by[i])
        out.append({j for _, j in cand[:k]})
    return out


def _neighbour_sets(e: torch.Tensor, num_queries: int) -> list[set[int]]:
    """[2, E] (query, point) pairs -> each query's set of points."""
    sets: list[set[int]] = [set() for _ in range(num_queries)]
    for i, j in zip(e[0].tolist(), e[1].tolist(), strict=True):
        sets[i].add(j)
    return sets


# ------------------------------------------------------------------ point operations
def test_farthest_point_sampling_matches_reference():
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(150, 3, generator=g)
    for start in (0, 37):
        assert po.farthest_point_sampling(pos, 40, start=start).tolist() == ref_fps(pos, 40, start)
    # exact ties (a grid): the lowest index wins, as torch's argmax and torch-cluster's CPU kernel
    grid = torch.tensor([[i, j, 0.0] for i in range(4) for j in range(4)])
    assert po.farthest_point_sampling(grid, 16).tolist() == ref_fps(grid, 16, 0)
    assert sorted(po.farthest_point_sampling(grid, 16).tolist()) == list(range(16))


def test_fps_torch_cluster_api():
    g = torch.Generator().manual_seed(1)
    src = torch.rand(70, 3, generator=g)
    batch = torch.tensor([0] * 30 + [1] * 40)
    idx = po.fps(src, batch, ratio=0.25, random_start=False)
    # ceil(30 * .25) = 8 from example 0 starting at its first point, ceil(40 * .25) = 10 from example 1 (offset 30)
    assert idx.tolist() == ref_fps(src[:30], 8, 0) + [30 + i for i in ref_fps(src[30:], 10, 0)]
    # the count is computed in float32 as torch-cluster does: 20000 * float32(2048 / 20000) rounds to exactly 2048
    assert po.fps(torch.rand(20000, 3), ratio=2048 / 20000, random_start=False).numel() == 2048
    torch.manual_seed(5)
    a = po.fps(src, batch, ratio=0.5)
    torch.manual_seed(5)
    assert torch.equal(a, po.fps(src, batch, ratio=0.5))  # random starts come from torch's generator
    with pytest.raises(ValueError, match="sorted"):
        po.fps(src, batch.flip(0))


@pytest.mark.parametrize("path", ["grid", "scan", "either"])
def test_radius_matches_reference(path, monkeypatch):
    # each query is answered from its grid cells, or by scanning the points in index order when it has many
    # candidates; force one or the other, or leave the choice to the candidate count (blocks of 64 here)
    if path != "either":
        monkeypatch.setattr(po, "_use_scan", lambda c, n: torch.full_like(c, path == "scan", dtype=torch.bool))
    monkeypatch.setattr(po, "_SCAN_BLOCK", 64)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(300, 3, generator=g)
    y = torch.cat([x[torch.randperm(300, generator=g)[:40]] + 0.01, torch.tensor([[9.0, 9.0, 9.0]])])
    bx = torch.tensor([0] * 150 + [1] * 150)
    by = torch.tensor([0] * 25 + [1] * 16)
    for r, m in ((0.1, 64), (0.3, 5), (0.25, 1000), (2.0, 64)):
        e = po.radius(x, y, r, bx, by, max_num_neighbors=m)
        assert list(zip(e[0].tolist(), e[1].tolist(), strict=True)) == ref_radius(x, y, r, bx, by, m), (r, m)
    # single example, no batch vectors; a point exactly at distance r is not a neighbour (strict <)
    e = po.radius(torch.tensor([[0.0, 0, 0], [0.5, 0, 0], [0.25, 0, 0]]), torch.tensor([[0.0, 0, 0]]), 0.5)
    assert e.tolist() == [[0, 0], [0, 2]]
    assert po.radius(x, y, 0.1, bx, torch.tensor([0] * 41), batch_size=3).shape[0] == 2  # empty example 2: fine


def test_knn_matches_reference():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(200, 3, generator=g)
    y = torch.rand(50, 3, generator=g)
    bx = torch.tensor([0] * 120 + [1] * 80)
    by = torch.tensor([0] * 20 + [1] * 30)
    e = po.knn(x, y, 3, bx, by)
    assert _neighbour_sets(e, len(y)) == ref_knn(x, y, 3, bx, by)
    # nearest first within each query
    d = ((y[e[0]] - x[e[1]]) ** 2).sum(1).view(-1, 3)
    assert torch.all(d[:, 1:] >= d[:, :-1])
    # fewer points than k: all of them (Contact-GraspNet interpolates 3 neighbours from small sets)
    assert po.knn(x[:2], y, 3).shape == (2, 2 * len(y))


@pytest.mark.skipif(
    importlib.machinery.PathFinder.find_spec("torch_cluster") is None,  # on disk, not our stand-in in sys.modules
    reason="torch-cluster is not installed (a 15-minute source build, not part of set-up): to check the stand-in "
    "against it once, `pip install --no-build-isolation torch-cluster==1.6.3` and run this test",
)
def test_point_ops_match_real_torch_cluster():
    import torch_cluster as tc

    assert not getattr(tc, "__isr_fallback__", False)
    g = torch.Generator().manual_seed(4)
    # a depth-camera-like cloud (a wall and a box, grid-spaced: many exact distance ties) and random clouds
    u, v = torch.meshgrid(torch.arange(200.0), torch.arange(100.0), indexing="xy")
    wall = torch.stack([u.flatten() * 0.003, v.flatten() * 0.003, torch.full((20000,), 1.0)], 1)
    wall[(u.flatten() > 80) & (u.flatten() < 120), 2] = 0.9
    for x in (wall, torch.rand(20000, 3, generator=g) * 0.4, torch.rand(5000, 3, generator=g)):
        for ratio in (2048 / x.size(0), 0.25, 1 / 3):
            assert torch.equal(po.fps(x, ratio=ratio, random_start=False), tc.fps(x, ratio=ratio, random_start=False))
        y = x[tc.fps(x, ratio=2048 / x.size(0), random_start=False)]
        for r in (0.02, 0.04, 0.08):
            ours = _neighbour_sets(po.radius(x, y, r, max_num_neighbors=64), len(y))
            theirs = _neighbour_sets(tc.radius(x, y, r, max_num_neighbors=64), len(y))
            true = _neighbour_sets(po.radius(x, y, r, max_num_neighbors=x.size(0)), len(y))
            for i, (a, b, t) in enumerate(zip(ours, theirs, true, strict=True)):
                if len(t) <= 64:
                    assert a == b == t, (r, i)
                else:  # capped: each keeps 64 true neighbours (torch-cluster's CPU kernel picks other ones)
                    assert len(a) == len(b) == 64 and a <= t and b <= t, (r, i)
        ours, theirs = po.knn(y, x, 3), tc.knn(y, x, 3)
        assert torch.equal(ours[0], theirs[0])
        d_ours = ((x[ours[0]] - y[ours[1]]) ** 2).sum(1)
        d_theirs = ((x[theirs[0]] - y[theirs[1]]) ** 2).sum(1)
        assert torch.allclose(d_ours.view(-1, 3).sort(1).values, d_theirs.view(-1, 3).sort(1).values)


def test_point_ops_reject_bad_input():
    x = torch.rand(10, 3)
    with pytest.raises(ValueError, match="floating"):
        po.radius(x.long(), x, 0.1)
    with pytest.raises(ValueError, match="same dimension"):
        po.knn(x, torch.rand(4, 2), 3)
    with pytest.raises(ValueError, match="num_samples"):
        po.farthest_point_sampling(x, 11)
    with pytest.raises(NotImplementedError, match="torch-cluster"):
        po.knn(x, x, 3, cosine=True)


def test_torch_cluster_stand_in():
    real = "torch_cluster" in sys.modules and not getattr(sys.modules["torch_cluster"], "__isr_fallback__", False)
    in_use = po.install_torch_cluster_fallback()
    if real or not in_use:
        pytest.skip("the real torch-cluster is installed: the stand-in is not used")
    tc = sys.modules["torch_cluster"]
    assert (tc.fps, tc.radius, tc.knn) == (po.fps, po.radius, po.knn)
    assert "batch_size" in tc.knn.__doc__  # torch_geometric.typing reads this to decide how to call knn
    with pytest.raises(ImportError, match="torch-cluster"):
        tc.grid_cluster  # noqa: B018 - any other op names the real package
    assert po.install_torch_cluster_fallback() is True  # idempotent


def test_grasp_package_does_not_import_the_extra():
    """The package must import without the extra: no top-level import of the network's packages."""
    optional = {"cgn_pytorch", "torch_geometric", "torch_cluster", "meshcat", "trimesh"}
    for path in GRASP_DIR.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            assert not {n.split(".")[0] for n in names} & optional, f"{path.name} imports {names} at module level"


def test_missing_extra_names_the_make_target(monkeypatch):
    for name in ("cgn_pytorch", "cgn_pytorch.contact_graspnet", "cgn_pytorch.util.config_utils"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    with pytest.raises(GraspExtraMissing, match="make setup-grasp") as info:
        load_network(device="cpu")
    assert isinstance(info.value, ImportError)


# ------------------------------------------------------------------ adapter geometry (no network)
K = Intrinsics(fx=500.0, fy=500.0, cx=319.5, cy=239.5, width=640, height=480)


def _plane_scene() -> tuple[np.ndarray, np.ndarray]:
    """A fronto-parallel wall at 1.0 m; instance 3 a 20 x 10 cm patch at 0.8 m right of and below the optical axis,
    instance 7 a patch on the wall; a NaN hole and a pixel beyond the z range."""
    depth = np.full((480, 640), 1.0, np.float32)
    label = np.zeros((480, 640), np.uint16)
    v, u = np.mgrid[0:480, 0:640]
    x, y = (u - K.cx) / K.fx * 0.8, (v - K.cy) / K.fy * 0.8  # metres at z = 0.8
    patch = (x > 0.05) & (x < 0.25) & (y > 0.02) & (y < 0.12)
    depth[patch], label[patch] = 0.8, 3
    label[50:60, 50:70] = 7
    depth[0:5, 0:5] = np.nan
    depth[479, 639] = 5.0
    return depth, label


def test_scene_points_optical_frame_metres_and_ids():
    depth, label = _plane_scene()
    pts, labels = scene_points(depth, K, label, flying_pixel_threshold=0.0)
    assert pts.dtype == np.float32 and pts.shape == (640 * 480 - 25 - 1, 3)  # NaN hole and the far pixel dropped
    box = pts[labels == 3]
    assert len(box) == int((label == 3).sum())
    # optical frame: right of and below the principal point = +x, +y; z forward = the depth, in metres
    assert np.allclose(box[:, 2], 0.8)
    assert box[:, 0].min() > 0.049 and box[:, 0].max() < 0.251 and box[:, 1].min() > 0.019 and box[:, 1].max() < 0.121
    # segmap ids are the instance indices, unchanged
    assert set(np.unique(labels).tolist()) == {0, 3, 7}
    wall7 = pts[labels == 7]
    assert np.allclose(wall7[:, 2], 1.0) and (wall7[:, :2] < 0).all()  # top left of the image: -x, -y
    # the first patch pixel (row-major) through the pinhole model, by hand
    v, u = np.argwhere(label == 3)[0]
    assert np.allclose(box[0], [(u - K.cx) / K.fx * 0.8, (v - K.cy) / K.fy * 0.8, 0.8], atol=1e-6)
    # flying pixels at the patch's depth step are removed by default
    assert len(scene_points(depth, K, label)[0]) < len(pts)


def test_local_region_follows_contact_graspnet():
    rng = np.random.default_rng(0)
    scene = rng.uniform(-1, 1, size=(20000, 3)).astype(np.float32)
    small = np.array([[0.0, 0.0, 1.0], [0.02, 0.01, 1.03]], np.float32)  # 3 cm: the region is the 0.3 m minimum
    inside = local_region(scene, small)
    center = (small.min(0) + small.max(0)) / 2
    assert np.array_equal(inside, np.all(np.abs(scene - center) < 0.15, axis=1))
    big = np.array([[-0.2, 0, 0.5], [0.2, 0, 0.5], [0, 0, 0.5]], np.float32)  # 0.4 m: 0.8 m capped at 0.6
    assert np.array_equal(local_region(scene, big), np.all(np.abs(scene - [0, 0, 0.5]) < 0.3, axis=1))
    # a far outlier (L1 > 0.4 m from the median) does not stretch the region
    with_outlier = np.vstack([small, small + 0.001, [[0.9, 0.9, 1.9]]]).astype(np.float32)
    assert np.array_equal(local_region(scene, with_outlier), local_region(scene, np.vstack([small, small + 0.001])))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d, k, lab: (np.nan_to_num(d).astype(np.uint16), k, lab), "float"),
        (lambda d, k, lab: (d, Intrinsics(500, 500, 159.5, 119.5, 320, 240), lab), "320x240"),
        (lambda d, k, lab: (d, k, lab[:100]), "shape"),
        (lambda d, k, lab: (d, k, lab.astype(np.float32)), "integer"),
        (lambda d, k, lab: (d, k, lab.astype(np.int32) - 1), "negative"),
        (lambda d, k, lab: (d, (500, 500, 319.5, 239.5), lab), "Intrinsics"),
    ],
)
def test_scene_points_rejects_bad_input(change, match):
    depth, label = _plane_scene()
    with pytest.raises(GraspError, match=match):
        scene_points(*change(depth, K, label))


# ------------------------------------------------------------------ the network on a simulated frame
@pytest.fixture(scope="module")
def planner():
    pytest.importorskip("cgn_pytorch", reason="the Contact-GraspNet extra is not installed (make setup-grasp)")
    from instance_seg_ros.grasp import ContactGraspNet

    return ContactGraspNet()  # the wheel's checkpoint, CUDA when present


@pytest.fixture(scope="module")
def sim_frame():
    from instance_seg_ros.sim.camera import Camera, d435_intrinsics
    from instance_seg_ros.sim.objects import TABLE_TOP_Z, ObjectSpec
    from instance_seg_ros.sim.scene import Scene

    z = TABLE_TOP_Z
    specs = [
        ObjectSpec("box", size=(0.06, 0.06, 0.10), position=(-0.08, 0.0, z + 0.05), mass=0),
        ObjectSpec("cylinder", size=(0.03, 0.12), position=(0.09, 0.03, z + 0.06), mass=0),
    ]
    cam = Camera.look_at(eye=(0.0, -0.55, z + 0.55), target=(0.0, 0.0, z + 0.05), intrinsics=d435_intrinsics())
    with Scene(support="table") as scene:
        for s in specs:
            scene.add_object(s)
        frame = scene.render(cam)
    return frame, frame.to_frame_result()


def _distance_to_surface(p: np.ndarray, obj) -> float:
    """Distance of a camera-frame point to the true surface of a simulated box or cylinder."""
    from instance_seg_ros.core.geometry import quaternion_to_matrix

    q = quaternion_to_matrix(obj.quat).T @ (p - obj.position)
    h = obj.extent / 2
    if obj.name == "cylinder":
        r = math.hypot(q[0], q[1])
        side, cap = abs(r - h[0]), abs(abs(q[2]) - h[2])
        return min(side if abs(q[2]) <= h[2] else math.inf, cap if r <= h[0] else math.inf, math.hypot(side, cap))
    outside = np.maximum(np.abs(q) - h, 0)
    return float(np.linalg.norm(outside)) if outside.any() else float(np.min(h - np.abs(q)))


@pytest.mark.slow
def test_grasps_lie_on_the_requested_object(planner, sim_frame):
    frame, result = sim_frame
    assert planner.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    by_name = {inst.class_name: inst for inst in result.instances}
    cyl, box = by_name["cylinder"], by_name["box"]
    objects = {o.id: o for o in frame.objects}
    missing = max(i.index for i in result.instances) + 5
    grasps = planner.plan(frame.depth, frame.intrinsics, result.label_image, [cyl.index, missing], max_grasps=15)
    assert set(grasps) == {cyl.index, missing} and grasps[missing] == []
    found = grasps[cyl.index]
    assert 0 < len(found) <= 15
    scores = [g.score for g in found]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.5 and max(scores) <= 1.0
    for g in found:
        # the contact is on the requested object's true surface (optical frame, metres), not on the box
        assert _distance_to_surface(g.contact, objects[cyl.track_id]) < 0.004
        assert _distance_to_surface(g.contact, objects[box.track_id]) > 0.02
        r = g.pose[:3, :3]
        assert np.allclose(r.T @ r, np.eye(3), atol=1e-5) and np.linalg.det(r) > 0.99
        assert 0.0 <= g.width <= MAX_WIDTH
        # the documented convention: the gripper base is GRIPPER_DEPTH behind the finger tips' midpoint
        assert np.allclose(g.pose[:3, 3], g.contact + g.width / 2 * r[:, 0] - GRIPPER_DEPTH * r[:, 2], atol=1e-9)
        assert np.allclose(g.pose[3], [0, 0, 0, 1])
    # upright input (the default): the grippers come from above the table, not up through it (the optical-frame
    # input made most of them approach from below), and the fingers close towards the object (signed width)
    # (with our point operations; a real torch-cluster CPU build fails the last check: its capped ball query keeps
    # the neighbours its k-d tree visits first, not a random subset as the CUDA kernel used in training does;
    # docs/grasps.md)
    from instance_seg_ros.grasp.planner import estimate_up

    up = estimate_up(frame.depth, frame.intrinsics)
    assert up @ np.array([0.0, -1.0, 0.0]) > 0.5  # the table's normal, towards the camera
    approach_up = [float(g.pose[:3, 2] @ up) for g in found]
    assert sum(a < 0 for a in approach_up) >= 0.8 * len(found), approach_up
    axis = objects[cyl.track_id].position - np.array([g.contact for g in found])
    towards = [float(np.dot(a, g.pose[:3, 0])) > 0 for a, g in zip(axis, found, strict=True) if g.width > 0]
    assert sum(towards) >= 0.7 * len(towards), towards


def test_plan_rejects_bad_requests(sim_frame):
    from instance_seg_ros.grasp import ContactGraspNet

    planner = ContactGraspNet(torch.nn.Linear(1, 1))  # a stand-in network: requests are checked before it runs
    frame, result = sim_frame
    args = (frame.depth, frame.intrinsics, result.label_image)
    assert planner.plan(*args, [99]) == {99: []}  # not in the image: no grasps, no network call
    with pytest.raises(GraspError, match="indices"):
        planner.plan(*args, [0])
    with pytest.raises(GraspError, match="indices"):
        planner.plan(*args, ["box"])
    with pytest.raises(GraspError, match="max_grasps"):
        planner.plan(*args, [1], max_grasps=0)
    with pytest.raises(GraspError, match="score_threshold"):
        planner.plan(*args, [1], score_threshold=1.5)
    with pytest.raises(GraspError, match="depth"):
        planner.plan(frame.depth[None], frame.intrinsics, result.label_image)
