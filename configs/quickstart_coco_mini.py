"""The quickstart recipe on real COCO images: ``coco_mini`` (80 train images, 80 categories).

A check that the whole path works on real data — JPEG decoding, crowd regions,
COCO's non-contiguous category ids, images of many sizes and aspect ratios —
which the synthetic shapes do not exercise: the quickstart detector
(``configs/quickstart.py``: narrow ResNet-18 with GroupNorm trained from scratch,
64-wide FPN, RetinaNet) must overfit its own training images, so the
validation split IS the training split (bbox AP on it is the memorisation check,
not a generalisation measure).

The dataset is found relative to the repository, at ``../shared/data/coco_mini``
(``annotations/instances_train2017.json``, ``train2017/``); give another root as
the config argument, or point the splits anywhere from the command line::

    python train.py --config=configs/quickstart_coco_mini.py --workdir=runs/coco_mini
    python train.py --config=configs/quickstart_coco_mini.py:/data/coco_mini --workdir=runs/coco_mini
    python train.py --config=configs/quickstart_coco_mini.py --workdir=runs/coco_mini \\
        --config.data.train.annotations=/data/x/train.json --config.data.train.images=/data/x/images \\
        --config.data.val.annotations=/data/x/train.json --config.data.val.images=/data/x/images

Differences from the quickstart, all for memorising 80 images in ~1,000 steps: a
fixed number of steps (``train.num_steps`` = 1200, 120 epochs of the 80 images: bbox AP
0.707 on them, 0.481 after 600 steps — ``benchmarks/RESULTS.md``; the epoch-based decays
are stretched over it); no augmentation (no flips, no crops, one scale: the training
images are exactly the evaluation images, shortest edge 320, longest at most
480 — larger than the quickstart's 224 because COCO objects are much smaller
than the synthetic shapes); up to 40 objects per image (coco_mini has up to 35).
"""

import os

import ml_collections

from msvision.config import sibling_config

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ROOT = os.path.join(REPOSITORY, "..", "shared", "data", "coco_mini")


def get_config(root: str = "") -> ml_collections.ConfigDict:
    root = os.path.normpath(root or DEFAULT_ROOT)
    config = sibling_config(__file__, "quickstart.py")
    config.data.synthetic.enabled = False
    for split in ("train", "val"):  # evaluated on its own training images
        config.data[split].annotations = os.path.join(root, "annotations", "instances_train2017.json")
        config.data[split].images = os.path.join(root, "train2017")
    config.data.max_instances = 40
    config.data.augment.hflip_prob = 0.0
    config.data.augment.crop_prob = 0.0
    config.data.augment.scales = (320,)
    config.data.augment.max_size = 480
    config.data.eval_scale = 320
    config.data.eval_max_size = 480
    config.data.buckets = ((384, 512), (512, 384), (512, 512))

    config.optim.warmup_steps = 50
    config.train.num_steps = 1200  # 80 images: AP 0.481 after 600 steps, 0.707 after 1200 (RESULTS)
    config.train.log_every = 50
    config.train.checkpoint_every = 200
    return config
