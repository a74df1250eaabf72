"""Contact-GraspNet grasps per instance from what our node publishes: depth, intrinsics and the label image.

The network is the PyTorch port in the ``cgn-pytorch`` wheel (an optional extra: ``make setup-grasp``). What this
module adds is the adapter, following NVlabs Contact-GraspNet's inference with a segmentation map
(``extract_point_clouds`` + ``predict_scene_grasps(local_regions=True, filter_grasps=True)``):

1. **Scene cloud**: every valid depth pixel back-projected into the camera optical frame (x right, y down,
   z forward, metres), kept where ``z_range[0] <= z <= z_range[1]`` (theirs: 0.2-1.8 m); flying pixels removed as
   in our pipeline (:func:`~instance_seg_ros.core.lifting.valid_depth_mask`). Each point keeps its pixel's label.
2. **Per instance** ``i`` (label value ``i`` = instance index ``i``, 0 = background): the segment's points, minus
   outliers farther than 0.4 m (L1) from their median; a **local region**: the scene points inside an axis-aligned
   cube centred on the segment's bounding box, edge ``clip(2 * largest extent, 0.3, 0.6)`` m.
3. The network's input frame (``input_frame``): by default **upright**, z along ``up`` (the support plane's normal,
   :func:`estimate_up`, or gravity given by the caller) and the scene cloud's mean at the origin, as cgn-pytorch's
   training clouds are (``dataset.py``: the rendered cloud moved into the scene's world frame, z up, mean
   subtracted). Measured with ``isr grasps`` on 10 simulated scenes: fed the optical frame, the network approaches
   from below the table (10 % of grasps from above, 99 % colliding); upright, 99 % come from above. Poses and
   contacts are mapped back to the optical frame. The region is brought to ``num_points`` (20 000) points (random
   subset, or random repeats when smaller), in random order; ``num_contacts`` (2048) points are picked by farthest
   point sampling; the network predicts one grasp at each.
4. Only grasps whose contact point lies on instance ``i`` are kept (a contact is one of the input points, so this
   is an exact label lookup), with score >= ``score_threshold``, best first, at most ``max_grasps``.

Randomness (subsets, sampling starts) is seeded per call (``seed``), so one input gives one answer.

Grasp convention (Contact-GraspNet's, Panda gripper): ``pose`` maps gripper coordinates to the optical frame;
its z axis is the approach direction, its x axis the closing direction from ``contact`` towards the other finger;
the origin is the gripper base, ``GRIPPER_DEPTH`` behind the midpoint of the two finger tips
(``contact + width / 2 * x``). ``width`` is the predicted opening, at most ``MAX_WIDTH``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.lifting import lift_instances, valid_depth_mask
from ..core.types import Intrinsics
from .point_ops import farthest_point_sampling, install_torch_cluster_fallback

__all__ = [
    "GRIPPER_DEPTH",
    "MAX_WIDTH",
    "ContactGraspNet",
    "Grasp",
    "GraspError",
    "GraspExtraMissing",
    "INPUT_FRAMES",
    "estimate_up",
    "load_network",
    "local_region",
    "scene_points",
    "upright_transform",
]

#: Panda gripper: from the gripper base to the finger tips along the approach axis, metres (the network's training
#: value, ``CGN.forward``'s default)
GRIPPER_DEPTH = 0.1034
#: the largest opening the network predicts: ``CGN.forward`` clamps its width to half its ``gripper_width`` argument;
#: we pass its default, 0.16 m (the wheel's ``inference()`` passes 0.08, which would cap widths at 0.04 m)
MAX_WIDTH = 0.08
_TRAINING_GRIPPER_WIDTH = 2 * MAX_WIDTH


class GraspError(ValueError):
    """Bad input to the grasp planner (shapes, dtypes, intrinsics, indices or parameters)."""


class GraspExtraMissing(ImportError):
    """The optional Contact-GraspNet extra (cgn-pytorch and what it imports) is not installed."""


@dataclass(frozen=True)
class Grasp:
    """One parallel-jaw grasp, in the camera optical frame (x right, y down, z forward), metres.

    Attributes:
        pose (np.ndarray[4, 4] float64): gripper frame -> optical frame (z: approach, x: closing direction, origin:
            gripper base; see the module docstring).
        score (float): the network's confidence, 0..1.
        width (float): predicted opening, metres (0..``MAX_WIDTH``): the network's signed width made positive, the
            pose turned half a turn about its approach where the sign was negative (the object on the -x side).
            Measured on simulated objects it is about 0.6 of the object's extent along the closing line: execute
            grasps with the gripper fully open and close on the object.
        contact (np.ndarray[3] float64): the contact point on the object (one input point).
    """

    pose: np.ndarray
    score: float
    width: float
    contact: np.ndarray = field(repr=False)


def _import_cgn() -> tuple[Any, Any]:
    """``(CGN class, config loader)`` from cgn_pytorch, with our torch_cluster stand-in when needed."""
    install_torch_cluster_fallback()  # before torch_geometric is imported by cgn_pytorch
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch_geometric 2.4 on torch.jit.script
            from cgn_pytorch.contact_graspnet import CGN
            from cgn_pytorch.util.config_utils import load_config
    except ImportError as e:
        raise GraspExtraMissing(
            f"Contact-GraspNet grasps need the optional extra: run `make setup-grasp` "
            f"(installs requirements/grasp.txt). Import failed: {e}"
        ) from e
    return CGN, load_config


def default_checkpoint() -> Path:
    """The checkpoint shipped in the cgn-pytorch wheel (``cgn_pytorch/checkpoints/current.pth``)."""
    _import_cgn()
    return Path(str(files("cgn_pytorch").joinpath("checkpoints/current.pth")))


def load_network(checkpoint: str | Path | None = None, device: str | torch.device | None = None) -> torch.nn.Module:
    """Contact-GraspNet (cgn-pytorch's ``CGN``) with trained weights, in eval mode.

    Args:
        checkpoint: a ``.pth`` holding ``{"state_dict": ...}``; default: the wheel's own.
        device: default CUDA when available, else CPU.

    Raises:
        GraspExtraMissing: cgn-pytorch (or what it imports) is not installed.
        GraspError: the checkpoint is missing or does not match the network.
    """
    cgn_class, load_config = _import_cgn()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    path = Path(checkpoint) if checkpoint is not None else default_checkpoint()
    if not path.is_file():
        raise GraspError(f"Contact-GraspNet checkpoint {path} does not exist.")
    state = torch.load(path, map_location=device, weights_only=True)  # saved on CUDA: map_location is needed
    if not isinstance(state, dict) or "state_dict" not in state:
        raise GraspError(f"{path} is not a cgn-pytorch checkpoint (a dict with 'state_dict').")
    net = cgn_class(load_config(), device)  # a fresh config each time: CGN edits the lists it is given
    try:
        net.load_state_dict(state["state_dict"])
    except RuntimeError as e:
        raise GraspError(f"{path} does not fit cgn-pytorch's network: {e}") from e
    return net.to(device).eval()


def _check_inputs(depth: Any, K: Any, label_image: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(depth, np.ndarray) or depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
        raise GraspError(
            "depth must be a float numpy array [H, W] in metres (NaN = invalid), got "
            f"{type(depth).__name__} {getattr(depth, 'dtype', '')} {list(getattr(depth, 'shape', []))}."
        )
    if not isinstance(K, Intrinsics):
        raise GraspError(f"K must be an Intrinsics, got {type(K).__name__}.")
    if (K.height, K.width) != depth.shape:
        raise GraspError(f"K is for {K.width}x{K.height} images but depth is {depth.shape[1]}x{depth.shape[0]}.")
    if not all(np.isfinite(v) for v in (K.fx, K.fy, K.cx, K.cy)) or K.fx <= 0 or K.fy <= 0:
        raise GraspError(f"K needs finite intrinsics with positive focal lengths, got {K}.")
    if not isinstance(label_image, np.ndarray) or label_image.shape != depth.shape:
        raise GraspError(
            f"label_image must be a numpy array of the depth's shape {list(depth.shape)}, got "
            f"{type(label_image).__name__} {list(getattr(label_image, 'shape', []))}."
        )
    if not np.issubdtype(label_image.dtype, np.integer):
        raise GraspError(f"label_image must hold integer instance indices (uint16), got dtype {label_image.dtype}.")
    if label_image.size and label_image.min() < 0:
        raise GraspError("label_image holds negative values; instance indices are >= 1 and 0 is background.")
    return depth.astype(np.float32, copy=False), label_image


def scene_points(
    depth: np.ndarray,
    K: Intrinsics,
    label_image: np.ndarray,
    *,
    z_range: tuple[float, float] = (0.2, 1.8),
    flying_pixel_threshold: float = 0.03,
) -> tuple[np.ndarray, np.ndarray]:
    """The scene cloud Contact-GraspNet sees, with each point's instance index.

    Args:
        depth (np.ndarray[H, W] float): metres, NaN (or <= 0) invalid.
        K: intrinsics of the image (``K.width, K.height`` = W, H).
        label_image (np.ndarray[H, W] integer): 0 background, ``i`` = instance index ``i``.
        z_range: keep points with ``z_range[0] <= z <= z_range[1]``, metres.
        flying_pixel_threshold: see :func:`~instance_seg_ros.core.lifting.valid_depth_mask` (0 disables).

    Returns:
        ``(points float32[N, 3], labels int64[N])``: optical frame, metres, pixels in row-major order.
    """
    depth, label_image = _check_inputs(depth, K, label_image)
    z0, z1 = (float(v) for v in z_range)
    if not (0 < z0 < z1 and np.isfinite(z1)):
        raise GraspError(f"z_range must be (near, far) with 0 < near < far, got {z_range}.")
    valid = valid_depth_mask(depth, depth_min=z0, depth_max=z1, flying_pixel_threshold=flying_pixel_threshold)
    # lift exactly those pixels (row-major): their depth is already in range, so nothing else is dropped
    cloud = lift_instances(depth, valid[None], K, depth_min=z0, depth_max=z1, flying_pixel_threshold=0.0)[0]
    labels = label_image[valid].astype(np.int64)
    if cloud.num_points != labels.size:  # lift_instances' contract: every valid pixel, row-major
        raise RuntimeError(f"lifted {cloud.num_points} points for {labels.size} valid pixels.")
    return cloud.points, labels


def _reject_median_outliers(points: np.ndarray, m: float = 0.4) -> np.ndarray:
    """Contact-GraspNet's ``reject_median_outliers``: keep points within L1 distance ``m`` of the median."""
    return points[np.abs(points - np.median(points, axis=0)).sum(axis=1) < m]


def local_region(
    points: np.ndarray, segment: np.ndarray, *, min_size: float = 0.3, max_size: float = 0.6
) -> np.ndarray:
    """Which scene points lie in the segment's local region (Contact-GraspNet's ``extract_3d_cam_boxes``).

    Args:
        points (np.ndarray[N, 3]): the scene cloud.
        segment (np.ndarray[M, 3]): the instance's points (M > 0).

    Returns:
        bool[N]: inside the axis-aligned cube centred on the segment's bounding box (after median-outlier
        rejection), edge ``clip(2 * largest extent, min_size, max_size)``; all False if no segment point survives.
    """
    seg = _reject_median_outliers(segment)
    if seg.shape[0] == 0:
        return np.zeros(points.shape[0], dtype=bool)
    lo, hi = seg.min(axis=0), seg.max(axis=0)
    center = (lo + hi) / 2
    half = float(np.clip(2 * (hi - lo).max(), min_size, max_size)) / 2
    return np.all((points > center - half) & (points < center + half), axis=1)


#: what :meth:`ContactGraspNet.plan` can feed the network: ``upright`` (z up, centred) or ``camera`` (optical frame)
INPUT_FRAMES = ("upright", "camera")
#: the camera's own up (-y of the optical frame), used when no support plane is found: right for a level camera
CAMERA_UP = np.array([0.0, -1.0, 0.0])


def estimate_up(depth: np.ndarray, K: Intrinsics) -> np.ndarray:
    """The upward direction in the optical frame: the normal of the dominant plane of ``depth`` (oriented towards the
    camera, :func:`~instance_seg_ros.core.support_plane.fit_support_plane`), or :data:`CAMERA_UP` without one."""
    from ..core.support_plane import fit_support_plane

    plane = fit_support_plane(np.asarray(depth, dtype=np.float32), K)
    return CAMERA_UP.copy() if plane is None else np.asarray(plane.normal, dtype=np.float64)


def upright_transform(up: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The optical -> upright transform, float64[4, 4]: z along ``up``, x the optical x made perpendicular to it
    (the optical y when x is nearly parallel to ``up``), origin at ``centre`` (optical frame, metres).

    cgn-pytorch's training clouds (``dataset.py``, ``ContactDataset``) are in the scene's world frame, z up, with the
    scene mean subtracted; fed optical-frame clouds of a table seen from above, the network approaches from below.
    """
    z = np.asarray(up, dtype=np.float64).reshape(3)
    n = np.linalg.norm(z)
    if not np.isfinite(n) or n < 1e-9:
        raise GraspError(f"up must be a finite nonzero 3-vector, got {up!r}.")
    z = z / n
    ref = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = ref - (ref @ z) * z
    x /= np.linalg.norm(x)
    rot = np.stack([x, np.cross(z, x), z])  # rows: the upright axes in optical coordinates
    t = np.eye(4)
    t[:3, :3] = rot
    t[:3, 3] = -rot @ np.asarray(centre, dtype=np.float64).reshape(3)
    return t


class ContactGraspNet:
    """Contact-GraspNet on our frames: ``plan(depth, K, label_image)`` -> grasps per instance index.

    Args:
        net: a loaded network (:func:`load_network`); default: the wheel's checkpoint on ``device``.
        device: where to run when ``net`` is not given: default CUDA when available, else CPU.
        z_range: depth range of the scene cloud, metres.
        num_points: points per local region fed to the network (its training value).
        num_contacts: grasp candidates per region (farthest point sampled; its training value).
        flying_pixel_threshold: see :func:`scene_points`.
        seed: seeds the random subsets and sampling starts of every call.

    Raises:
        GraspExtraMissing: the optional extra is not installed (``make setup-grasp``).
    """

    def __init__(
        self,
        net: torch.nn.Module | None = None,
        *,
        device: str | torch.device | None = None,
        z_range: tuple[float, float] = (0.2, 1.8),
        num_points: int = 20000,
        num_contacts: int = 2048,
        flying_pixel_threshold: float = 0.03,
        seed: int = 0,
    ) -> None:
        if not 1 <= num_contacts <= num_points:
            raise GraspError(f"need 1 <= num_contacts <= num_points, got {num_contacts} and {num_points}.")
        if net is None:
            net = load_network(device=device)
        self.net = net.eval()
        self.device = next(net.parameters()).device
        self.z_range = z_range
        self.num_points = int(num_points)
        self.num_contacts = int(num_contacts)
        self.flying_pixel_threshold = float(flying_pixel_threshold)
        self.seed = int(seed)

    def plan(
        self,
        depth: np.ndarray,
        K: Intrinsics,
        label_image: np.ndarray,
        indices: list[int] | None = None,
        *,
        max_grasps: int = 20,
        score_threshold: float = 0.5,
        up: np.ndarray | None = None,
        input_frame: str = "upright",
    ) -> dict[int, list[Grasp]]:
        """Grasps for each requested instance.

        Args:
            depth (np.ndarray[H, W] float32): metres, NaN invalid.
            K: intrinsics of the image.
            label_image (np.ndarray[H, W] uint16): 0 background, ``i`` = instance index ``i``.
            indices: which instances; default: every index present in ``label_image``.
            max_grasps: at most this many per instance, best first.
            score_threshold: drop grasps scored below this (0..1).
            up (np.ndarray[3] | None): the upward direction in the optical frame (gravity from TF, or the support
                plane's normal); default: estimated by :func:`estimate_up`.
            input_frame: ``upright`` (default): the network sees the cloud with z along ``up`` and the cloud's mean
                at the origin, as in cgn-pytorch's training data; ``camera``: the optical frame as it is (measured
                far worse: the grasps approach from below the table; kept for comparison, ``isr grasps``).

        Returns:
            ``{index: [Grasp, ...]}`` with every requested index; an empty list when the instance has no valid
            depth in ``z_range`` or no grasp passes the threshold.

        Raises:
            GraspError: bad inputs or parameters.
        """
        if not (isinstance(max_grasps, int | np.integer) and max_grasps >= 1):
            raise GraspError(f"max_grasps must be a positive integer, got {max_grasps!r}.")
        if not (isinstance(score_threshold, int | float | np.floating) and 0.0 <= score_threshold <= 1.0):
            raise GraspError(f"score_threshold must be in [0, 1], got {score_threshold!r}.")
        points, labels = scene_points(
            depth, K, label_image, z_range=self.z_range, flying_pixel_threshold=self.flying_pixel_threshold
        )
        if indices is None:
            wanted = [int(i) for i in np.unique(label_image) if i != 0]
        else:
            if not isinstance(indices, list | tuple | np.ndarray) or not all(
                isinstance(i, int | np.integer) and not isinstance(i, bool) for i in indices
            ):
                raise GraspError(f"indices must be a list of instance indices (int >= 1), got {indices!r}.")
            wanted = [int(i) for i in indices]
            if any(i < 1 for i in wanted):
                raise GraspError(f"instance indices are >= 1 (0 is background), got {wanted}.")
        if input_frame not in INPUT_FRAMES:
            raise GraspError(f"input_frame must be one of {', '.join(INPUT_FRAMES)}, got {input_frame!r}.")
        back = np.eye(4)
        if input_frame == "upright" and points.shape[0]:
            to_up = upright_transform(estimate_up(depth, K) if up is None else up, points.mean(axis=0))
            back = np.linalg.inv(to_up)
            points = (points @ to_up[:3, :3].T + to_up[:3, 3]).astype(np.float32)
        out: dict[int, list[Grasp]] = {}
        for index in wanted:
            on = labels == index
            if not on.any():
                out[index] = []
                continue
            region = np.flatnonzero(local_region(points, points[on]))
            grasps = self._region_grasps(points, labels, region, index, max_grasps, score_threshold)
            out[index] = [Grasp(pose=back @ g.pose, score=g.score, width=g.width,
                                contact=back[:3, :3] @ g.contact + back[:3, 3]) for g in grasps]
        return out

    @torch.no_grad()
    def _region_grasps(
        self, points: np.ndarray, labels: np.ndarray, region: np.ndarray, index: int, max_grasps: int, thr: float
    ) -> list[Grasp]:
        if region.size == 0:
            return []
        rng = np.random.default_rng([self.seed, index])
        if region.size >= self.num_points:
            src = rng.choice(region, size=self.num_points, replace=False)
        else:  # as Contact-GraspNet's regularize_pc_point_count: repeat random points, then shuffle all
            src = rng.permutation(np.concatenate([region, rng.choice(region, size=self.num_points - region.size)]))
        pos = torch.from_numpy(points[src]).to(self.device)
        # seeds the stand-in's random fps starts inside the network (levels 2 and 3) without touching the caller's RNG
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
            torch.manual_seed(self.seed)
            warnings.filterwarnings("ignore", message=".*torch.cross.*")  # deprecated call inside cgn_pytorch
            warnings.filterwarnings("ignore", message=".*default value of dim will change.*")
            picks = farthest_point_sampling(pos, self.num_contacts)
            _, poses, logits, widths, _, _ = self.net(  # the contacts it returns are pos[picks]
                pos[:, 3:],  # no per-point features: the network sees positions only
                pcd_poses=pos,
                batch=torch.zeros(pos.size(0), dtype=torch.long, device=self.device),
                idxs=picks,
                gripper_depth=GRIPPER_DEPTH,
                gripper_width=_TRAINING_GRIPPER_WIDTH,
            )
        scores = torch.sigmoid(logits).reshape(-1).cpu().numpy()
        picked = src[picks.cpu().numpy()]  # scene point index of each contact
        keep = (labels[picked] == index) & (scores >= thr)
        _, first = np.unique(picked, return_index=True)  # repeated points (small regions): one grasp each
        keep &= np.isin(np.arange(picked.size), first)
        order = np.flatnonzero(keep)
        order = order[np.argsort(-scores[order], kind="stable")][:max_grasps]
        poses_np = poses.reshape(-1, 4, 4).double().cpu().numpy()
        grasps = []
        for k in order:
            contact = points[picked[k]].astype(np.float64)
            r = poses_np[k, :3, :3].copy()
            # The network's width is signed: CGN.forward places the gripper origin with it, then clamps it at 0 for
            # its output. The sign says on which side of the contact the object lies (it agrees with the true side
            # for 95 % of grasps on our simulated scenes); recover it from the network's own origin.
            w = 2.0 * float((poses_np[k, :3, 3] - contact + GRIPPER_DEPTH * r[:, 2]) @ r[:, 0])
            if w < 0:  # object on the -x side: half a turn about the approach keeps x pointing to the other finger
                r = r @ np.diag([-1.0, -1.0, 1.0])
            width = min(abs(w), MAX_WIDTH)
            pose = np.eye(4)
            pose[:3, :3] = r
            pose[:3, 3] = contact + width / 2 * r[:, 0] - GRIPPER_DEPTH * r[:, 2]  # the network's own origin
            grasps.append(Grasp(pose=pose, score=float(scores[k]), width=width, contact=contact))
        return grasps
