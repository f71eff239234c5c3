"""A tiny quickstart variant for tests: 8-wide ResNet-18, 16-wide FPN, ~96 px images.

``get_config("ROOT")`` puts the synthetic dataset under ROOT (a test tmp dir).
"""

import importlib.util
import os
import tempfile

_QUICKSTART = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "quickstart.py")


def get_config(root: str = os.path.join(tempfile.gettempdir(), "msvision_tiny_shapes")):
    spec = importlib.util.spec_from_file_location("quickstart", _QUICKSTART)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.data.synthetic.root = root
    config.data.synthetic.num_train = 24
    config.data.synthetic.num_val = 8
    config.data.synthetic.image_size = 96
    config.data.batch_size = 4
    config.data.eval_batch_size = 4
    config.data.max_instances = 8
    config.data.augment.scales = (80, 96)
    config.data.augment.max_size = 128
    config.data.augment.crop_resize_scales = (80, 96)
    config.data.augment.crop_min = 64
    config.data.augment.crop_max = 96
    config.data.eval_scale = 96
    config.data.eval_max_size = 128
    config.data.buckets = ((128, 128),)
    config.data.num_threads = 2
    config.data.prefetch_buffer = 2
    config.model.backbone.width = 8
    config.model.neck.channels = 16
    config.model.head.inference.nms_candidates = 100
    config.model.head.inference.max_detections = 20
    config.optim.warmup_steps = 0
    config.train.num_steps = 8
    config.train.log_every = 2
    config.train.checkpoint_every = 4
    config.train.eval_at_end = False
    return config
