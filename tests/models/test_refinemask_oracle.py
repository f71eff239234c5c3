"""The RefineMask++ network against a torch re-implementation of the released
``SimpleRefineMaskHead`` forward (RefineMask, DetSeg ``models/modules/refine_mask.py``) plus
EffSeg's query fusion, with the same weights: torchvision ``roi_align`` for the instance RoIs,
``F.grid_sample`` for mmcv's ``SimpleRoIAlign`` of the semantic maps, ``avg_pool2d`` for the
global branch, ``nn.Upsample`` (align_corners=False) between stages and the align-corners ×2 of
the last logits."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from test_refinemask import C, LEVELS, build, make_pyramid, run_head


def torch_forward(head, pyramid, boxes, queries, labels, torch):
    F = torch.nn.functional
    t = lambda a: torch.from_numpy(np.asarray(a, np.float64))  # noqa: E731

    def conv(x, c):
        return F.conv2d(x, t(c.kernel[...]).permute(3, 2, 0, 1), t(c.bias[...]), padding=c.dilation,
                        dilation=c.dilation)

    def lin(x, layer):  # a 1x1 convolution on NCHW
        return F.conv2d(x, t(layer.kernel[...]).T[:, :, None, None], t(layer.bias[...]))

    def class_logits(x, layer, lab):
        w = t(layer.kernel[...]).T[lab]  # [N, F]
        return (x * w[:, :, None, None]).sum(1, keepdim=True) + t(layer.bias[...])[lab][:, None, None, None]

    b, r = labels.shape
    image = torch.arange(b).repeat_interleave(r)
    flat_boxes = t(boxes.reshape(-1, 4))
    lab = torch.from_numpy(labels.reshape(-1).astype(np.int64))
    p2 = t(pyramid[2]).permute(0, 3, 1, 2)
    import torchvision

    x = torchvision.ops.roi_align(p2, torch.cat([image[:, None].double(), flat_boxes], 1), 14, 0.25, 2, aligned=True)
    qf = head.query_fusion
    q = F.relu(t(queries.reshape(b * r, -1)) @ t(qf.query_proj.kernel[...]) + t(qf.query_proj.bias[...]))
    q = q[:, :, None, None].expand(-1, -1, 14, 14)
    x = x + lin(F.relu(lin(torch.cat([q, x], 1), qf.fuse.hidden)), qf.fuse.out)
    for c in head.instance_convs:
        x = F.relu(conv(x, c))
    sem = p2
    for c in head.semantic_convs:
        sem = F.relu(conv(sem, c))
    out = []
    height, width = sem.shape[-2:]
    for s, stage in enumerate(head.stages):
        logits = class_logits(x, head.stage_logits[s], lab)
        out.append(logits[:, 0])
        sm = F.relu(lin(sem, stage.semantic_in))[image]
        size = x.shape[-1]
        c = (torch.arange(size, dtype=torch.float64) + 0.5) / size
        px = flat_boxes[:, 0, None] + c[None] * (flat_boxes[:, 2] - flat_boxes[:, 0])[:, None]  # [N, S]
        py = flat_boxes[:, 1, None] + c[None] * (flat_boxes[:, 3] - flat_boxes[:, 1])[:, None]
        grid = torch.stack([(px / (4 * width) * 2 - 1)[:, None, :].expand(-1, size, -1),
                            (py / (4 * height) * 2 - 1)[:, :, None].expand(-1, -1, size)], -1)
        ins = F.grid_sample(sm, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        prob = logits.sigmoid()
        h = F.relu(lin(torch.cat([x, ins, prob], 1), stage.fuse_in))
        fusion = stage.fusion
        total = sum(F.relu(conv(h, branch)) for branch in fusion.branches) + F.avg_pool2d(h, size)
        h = F.relu(lin(total, fusion.merge))
        h = F.relu(lin(h, stage.fuse_out))
        x = torch.cat([h, prob], 1)
        if s < len(head.stages) - 1:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    last = class_logits(x, head.stage_logits[-1], torch.zeros_like(lab))
    out.append(F.interpolate(last, scale_factor=2, mode="bilinear", align_corners=True)[:, 0])
    return [o.reshape(b, r, *o.shape[-2:]).numpy() for o in out]


@pytest.mark.oracle
@pytest.mark.slow  # one head compile
def test_network_matches_the_released_head_in_torch():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    graphdef, state = build(semantic_level=2)
    rng = np.random.default_rng(11)
    pyramid = make_pyramid(12)
    boxes = np.array([[[4.3, 6.1, 40.2, 50.7], [10.5, 0.2, 61.3, 30.9]],
                      [[20.1, 20.4, 31.7, 33.2], [-3.0, 3.3, 56.4, 47.5]]], np.float32)  # all on P2 (eq. 5.1)
    queries = rng.normal(size=(2, 2, C)).astype(np.float32)
    labels = np.array([[1, 4], [0, 2]], np.int32)
    ours, _ = run_head(graphdef, state, pyramid, jnp.asarray(queries), jnp.asarray(boxes), labels,
                       jnp.ones((2, 2), bool), image_sizes=np.array([[64, 64], [64, 64]], np.int32))
    head = nnx.merge(graphdef, state)
    theirs = torch_forward(head, {l: np.asarray(v) for l, v in pyramid.items()}, boxes, queries, labels, torch)
    assert LEVELS[0] == 2
    for s, (a, b) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=f"stage {s}")
