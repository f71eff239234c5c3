"""Detection losses, elementwise (no reduction).

Box losses take boxes ``[..., 4]`` ``(x0, y0, x1, y1)`` (predicted, target) and
return ``[...]``. Classification losses take logits and targets of equal shape and
return that shape. Reduce (sum, as the author's code, or a mean) in the caller.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from msvision.ops.boxes import box_area

Array = jnp.ndarray


def sigmoid_bce_loss(logits: Array, targets: Array) -> Array:
    """Elementwise ``torch.nn.functional.binary_cross_entropy_with_logits`` (no reduction).

    ``max(x, 0) - x t + log(1 + exp(-|x|))``; ``logits``, ``targets`` broadcastable, float.
    """
    return jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def sigmoid_focal_loss(
    logits: Array, targets: Array, alpha: float = 0.25, gamma: float = 2.0
) -> Array:
    """Sigmoid focal loss (Lin et al. 2017), as ``torchvision.ops.sigmoid_focal_loss``.

    ``loss = alpha_t * (1 - p_t)**gamma * BCE(x, t)`` with ``p_t = p t + (1-p)(1-t)``,
    ``alpha_t = alpha t + (1 - alpha)(1 - t)``.

    Args:
      logits: ``[...]`` float.
      targets: ``[...]`` in ``[0, 1]`` (may be soft).
      alpha: weight of positives; ``alpha < 0`` disables the weighting.
      gamma: focusing exponent.
    """
    targets = targets.astype(logits.dtype)
    p = jax.nn.sigmoid(logits)
    ce = sigmoid_bce_loss(logits, targets)
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def quality_focal_loss(logits: Array, soft_targets: Array, beta: float = 2.0) -> Array:
    """Quality focal loss (Li et al. 2020, GFL), sigmoid version as mmdet's.

    ``loss = BCE(x, y) * |sigmoid(x) - y|**beta`` per element, where ``y`` is the
    soft target (IoU of the predicted and matched box on the target class, 0
    elsewhere). This is mmdet's ``quality_focal_loss`` written densely: negatives
    (``y = 0``) get ``BCE(x, 0) * sigmoid(x)**beta``.

    Args:
      logits: ``[...]``; soft_targets: ``[...]`` in ``[0, 1]``.
    """
    soft_targets = soft_targets.astype(logits.dtype)
    scale = jnp.abs(jax.nn.sigmoid(logits) - soft_targets) ** beta
    return sigmoid_bce_loss(logits, soft_targets) * scale


def smooth_l1_loss(pred: Array, target: Array, beta: float) -> Array:
    """Smooth L1 (Huber / beta) loss; ``beta < 1e-5`` gives L1 (as fvcore/detectron2).

    ``0.5 d**2 / beta`` if ``|d| < beta`` else ``|d| - 0.5 beta``, ``d = pred - target``.
    """
    diff = jnp.abs(pred - target)
    if beta < 1e-5:
        return diff
    return jnp.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)


def l1_loss(pred: Array, target: Array) -> Array:
    """``|pred - target|`` elementwise."""
    return jnp.abs(pred - target)


def _inter_union(boxes1: Array, boxes2: Array) -> tuple[Array, Array]:
    lt = jnp.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = jnp.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = jnp.clip(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1) + box_area(boxes2) - inter
    return inter, union


def _enclosing_wh(boxes1: Array, boxes2: Array) -> Array:
    lt = jnp.minimum(boxes1[..., :2], boxes2[..., :2])
    rb = jnp.maximum(boxes1[..., 2:], boxes2[..., 2:])
    return rb - lt


def _centre_distance_sq(boxes1: Array, boxes2: Array) -> Array:
    c1 = (boxes1[..., :2] + boxes1[..., 2:]) * 0.5
    c2 = (boxes2[..., :2] + boxes2[..., 2:]) * 0.5
    return jnp.sum((c1 - c2) ** 2, axis=-1)


def giou_loss(boxes1: Array, boxes2: Array, *, eps: float = 1e-7) -> Array:
    """``1 - GIoU``, as ``torchvision.ops.generalized_box_iou_loss`` (``[..., 4] -> [...]``)."""
    inter, union = _inter_union(boxes1, boxes2)
    iou = inter / (union + eps)
    wh = _enclosing_wh(boxes1, boxes2)
    area_c = wh[..., 0] * wh[..., 1]
    return 1 - (iou - (area_c - union) / (area_c + eps))


def _diou_loss_and_iou(boxes1: Array, boxes2: Array, eps: float) -> tuple[Array, Array]:
    inter, union = _inter_union(boxes1, boxes2)
    iou = inter / (union + eps)
    wh = _enclosing_wh(boxes1, boxes2)
    diag_sq = wh[..., 0] ** 2 + wh[..., 1] ** 2 + eps
    return 1 - iou + _centre_distance_sq(boxes1, boxes2) / diag_sq, iou


def diou_loss(boxes1: Array, boxes2: Array, *, eps: float = 1e-7) -> Array:
    """Distance-IoU loss (Zheng et al. 2020), as ``torchvision.ops.distance_box_iou_loss``.

    ``1 - IoU + rho**2 / c**2`` (centre distance over enclosing-box diagonal).
    """
    return _diou_loss_and_iou(boxes1, boxes2, eps)[0]


def ciou_loss(boxes1: Array, boxes2: Array, *, eps: float = 1e-7) -> Array:
    """Complete-IoU loss (Zheng et al. 2021), as ``torchvision.ops.complete_box_iou_loss``.

    ``DIoU loss + alpha v``, ``v = 4/pi**2 (atan(w2/h2) - atan(w1/h1))**2``,
    ``alpha = v / (1 - IoU + v)`` without gradient (``boxes2`` is the target).
    """
    loss, iou = _diou_loss_and_iou(boxes1, boxes2, eps)
    w1 = boxes1[..., 2] - boxes1[..., 0]
    h1 = boxes1[..., 3] - boxes1[..., 1]
    w2 = boxes2[..., 2] - boxes2[..., 0]
    h2 = boxes2[..., 3] - boxes2[..., 1]
    v = (4 / math.pi**2) * (jnp.arctan(w2 / h2) - jnp.arctan(w1 / h1)) ** 2
    alpha = jax.lax.stop_gradient(v / (1 - iou + v + eps))
    return loss + alpha * v


def eiou_loss(
    boxes1: Array, boxes2: Array, *, smooth_point: float = 0.1, eps: float = 1e-6
) -> Array:
    """Extended-IoU loss (Peng & Yu 2021), exactly mmdet's ``EIoULoss``.

    This is the EIoU the thesis cites ([66] Peng & Yu, "A systematic IoU-related
    method", TIP 2021) and the one the author's FQDetV2 config uses (mmdet
    ``EIoULoss``, defaults ``smooth_point=0.1``, ``eps=1e-6``). It is NOT the
    "Focal and efficient IoU" of Zhang et al. 2022.

    The intersection is *extended* to non-overlapping boxes: with ``E`` the
    top-left corner of the enclosing box and ``I = (ix0, iy0, ix1, iy1)`` the
    (possibly inverted) intersection box, measured from ``E``,
    ``inter = ix1 iy1 + min(ix0, ix1) min(iy0, iy1) - ix0 max(iy0, iy1)
    - max(ix0, ix1) iy0``, which is the usual intersection when the boxes
    overlap and negative otherwise (so the loss keeps a gradient). With
    ``u = 1 - inter / (union + eps)``, the loss is smooth-L1-like:
    ``0.5 u**2 / s`` if ``u < s`` else ``u - 0.5 s``.

    Args:
      boxes1: ``[..., 4]`` predicted boxes; boxes2: ``[..., 4]`` targets.
    """
    px0, py0, px1, py1 = jnp.moveaxis(boxes1, -1, 0)
    tx0, ty0, tx1, ty1 = jnp.moveaxis(boxes2, -1, 0)
    ex0 = jnp.minimum(px0, tx0)
    ey0 = jnp.minimum(py0, ty0)
    ix0 = jnp.maximum(px0, tx0) - ex0
    iy0 = jnp.maximum(py0, ty0) - ey0
    ix1 = jnp.minimum(px1, tx1) - ex0
    iy1 = jnp.minimum(py1, ty1) - ey0
    inter = (
        ix1 * iy1
        + jnp.minimum(ix0, ix1) * jnp.minimum(iy0, iy1)
        - ix0 * jnp.maximum(iy0, iy1)
        - jnp.maximum(ix0, ix1) * iy0
    )
    union = (px1 - px0) * (py1 - py0) + (tx1 - tx0) * (ty1 - ty0) - inter + eps
    u = 1 - inter / union
    return jnp.where(u < smooth_point, 0.5 * u * u / smooth_point, u - 0.5 * smooth_point)
