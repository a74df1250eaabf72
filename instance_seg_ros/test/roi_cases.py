"""Random overlapping RoI masks for the mask-ownership tests (test_geometric_proposals.py, test_kernels.py)."""

from __future__ import annotations

import torch

#: the image the RoIs are pasted into, (H, W)
SIZE = (80, 96)


def overlapping_rois(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(boxes [n, 4], visible-mask probabilities [n, 28, 28])`` of 2 to 11 RoIs in a :data:`SIZE` image, some
    reaching over its border, with smooth probabilities in about [-0.3, 1.3] (every kind of overlap)."""
    n = int(torch.randint(2, 12, (1,), generator=g))
    xy = torch.rand(n, 2, generator=g) * torch.tensor([100.0, 70.0]) - 10.0
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 60 + 2], dim=1)
    probs = torch.nn.functional.avg_pool2d(torch.rand(n, 1, 28, 28, generator=g), 5, 1, 2)[:, 0] * 1.6 - 0.3
    return boxes, probs
