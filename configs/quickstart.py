"""Quickstart: a small RetinaNet trained from scratch on the built-in synthetic dataset.

The README's first command. Generates ``data/shapes`` (COCO-format shapes on
textured backgrounds) when absent, trains on the CPU in about 15 minutes and
evaluates on the validation split at the end. Everything is the thesis's
RetinaNet recipe scaled down: a narrow ResNet-18 with trainable GroupNorm (no
ImageNet weights to start from, so frozen BatchNorm would be an identity), a 64-wide
FPN, DETR-style augmentation with shortest edges around 224 instead of 800.
"""

import ml_collections

from msvision.data.pipeline import default_data_config
from msvision.models.build import default_model_config
from msvision.train.defaults import default_eval_config, default_train_config
from msvision.train.optimizer import default_optim_config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = default_data_config()
    config.data.synthetic = ml_collections.ConfigDict(
        dict(enabled=True, root="data/shapes", num_train=600, num_val=100, image_size=224, seed=0)
    )
    config.data.max_instances = 16
    config.data.batch_size = 8
    config.data.eval_batch_size = 8
    config.data.augment.scales = tuple(range(160, 257, 16))
    config.data.augment.max_size = 320
    config.data.augment.crop_resize_scales = (160, 192, 224)
    config.data.augment.crop_min = 128
    config.data.augment.crop_max = 224
    config.data.eval_scale = 224
    config.data.eval_max_size = 320
    config.data.buckets = ((256, 320), (320, 256), (320, 320))
    config.data.num_threads = 4
    config.data.prefetch_buffer = 4

    config.model = default_model_config()
    config.model.backbone.depth = 18
    config.model.backbone.width = 16
    config.model.backbone.frozen_stages = 0
    config.model.backbone.norm = "group_norm"
    config.model.neck.channels = 64
    config.model.head.subnets.num_convs = 1

    config.optim = default_optim_config()
    config.optim.lr = 1e-3
    config.optim.backbone_lr = 1e-3
    config.optim.weight_decay = 1e-4
    config.optim.epochs = 12
    config.optim.decay_epochs = (9, 11)
    config.optim.warmup_steps = 100
    config.optim.clip_norm = 1.0

    config.train = default_train_config()
    config.train.num_steps = 0
    config.train.log_every = 20
    config.train.checkpoint_every = 200
    config.eval = default_eval_config()
    return config
