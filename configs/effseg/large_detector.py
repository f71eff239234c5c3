"""The detector the four mask-head comparisons on large objects start from (detection only).

``configs/effseg/large_{effseg,maskrcnn,pointrend,refinemask}.py`` compare the chapter 5
heads on ``data/shapes_large`` (``data.synthetic.variant='large'``,
:mod:`msvision.data.synthetic_large`): objects 96–400 px across with 1–4 px outline detail
(gear teeth, spokes, spider legs, comb teeth, holes) on ~448 px images, where a 28² mask
cannot follow the outline and a 112² one can. This file is what they share:

- the detector: the FQDet quickstart's (narrow GroupNorm ResNet-18, improved FQDet with
  100 queries, 3 decoder layers) on a 64-wide FPN over **P2–P7** (the thesis's
  segmentation pyramid, section 5.4.1), anchors on every level;
- the data: 1,000 training and 200 validation images, one 512² bucket, DETR-style
  augmentation around a 448 px shortest edge (384 at the smallest scales), masks as
  full-image masks;
- the optimiser: the FQDet quickstart's AdamW, gradient clipping at 1.0.

Trained alone (boxes only) it is the common starting point of the four head runs, as
the thesis starts every head from the same ImageNet-pretrained backbone: on two CPU
cores a from-scratch detector does not converge in a head run's 30 minutes, and
sharing it keeps detector differences out of the mask comparison. The head runs read it
(``train.init_from``), keep its backbone and detection head fixed and train its pyramid
with the mask head (``optim.frozen_parts``).

    python train.py --config=configs/effseg/large_detector.py --workdir=runs/large/detector

Results: ``benchmarks/RESULTS.md``, "Mask heads on large objects".
"""

import ml_collections

from msvision.config import sibling_config

WIDTH = 64


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "../fqdet/quickstart_fqdet.py")
    data = config.data
    data.synthetic = ml_collections.ConfigDict(dict(
        enabled=True, root="data/shapes_large", num_train=1000, num_val=200, image_size=448, seed=0,
        variant="large"))
    data.max_instances = 8
    data.batch_size = 4
    data.eval_batch_size = 4
    data.augment.scales = tuple(range(384, 449, 32))
    data.augment.max_size = 512
    data.augment.crop_resize_scales = (384, 416, 448)
    data.augment.crop_min = 288
    data.augment.crop_max = 416
    data.eval_scale = 448
    data.eval_max_size = 512
    data.buckets = ((512, 512),)

    model = config.model
    model.backbone.out_levels = (2, 3, 4, 5)
    model.neck.channels = WIDTH
    model.neck.out_levels = (2, 3, 4, 5, 6, 7)

    config.optim.epochs = 8
    config.optim.decay_epochs = (6, 7)
    config.train.checkpoint_every = 250
    config.train.eval_every = 500
    return config
