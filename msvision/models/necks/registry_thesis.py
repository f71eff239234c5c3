"""Builder for the thesis's necks: TPN, BiFPN, bFPN, hFPN (chapter 3) and DefEncoder (4.5.1).

``build_model`` (``msvision/models/build.py``) dispatches here for
``config.model.neck.name in THESIS_NECKS``.

Config fields (``config.model.neck``; missing optional fields take the defaults
below):

  name             'tpn' | 'bifpn' | 'bfpn' | 'hfpn' | 'defenc'
  in_levels        backbone levels used, e.g. (3, 4, 5) or (2, 3, 4, 5)
  out_levels       pyramid levels, (3, 4, 5, 6, 7) or (2, …, 7)
  channels         D = 256
  extra_source     'input' (default: P6 from C5, author's TPN) or 'lateral' (from P5)
  tpn/bfpn/hfpn/bifpn:
    num_layers       L (TPN layers; BiFPN layers; bFPN/hFPN: B·L bottlenecks per level)
    num_bottlenecks  B (bottlenecks per self-processing operation; unused by BiFPN)
    hidden_channels  64 (bottleneck hidden size)
    num_groups       8 (GroupNorm groups)
  defenc:
    num_layers 6, num_heads 8, num_points 4, ffn_dim 2048, dropout 0.0,
    msda_impl 'auto' (MSDA implementation switch, see msvision.ops.msda),
    remat False (True: recompute the encoder layers in the backward pass, keeping
      one [B, S, D] map per layer; DefEnc-P2 needs it to train 2×800² in 24 GB)
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from flax import nnx

THESIS_NECKS = ("tpn", "bifpn", "bfpn", "hfpn", "defenc")

_DEFAULTS = dict(
    out_levels=(3, 4, 5, 6, 7), channels=256, extra_source="input", num_groups=8, hidden_channels=64,
)


def _get(cfg: Any, key: str, default: Any) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def build_neck_thesis(
    neck_cfg: Any,
    *,
    in_channels: Mapping[int, int],
    rngs: nnx.Rngs,
    dtype: Optional[Any] = None,
) -> nnx.Module:
    """Builds the neck named ``neck_cfg.name`` (one of :data:`THESIS_NECKS`).

    Args:
      neck_cfg: the ``config.model.neck`` section (ConfigDict or dict).
      in_channels: ``{level: C_l}`` of the backbone outputs; restricted to
        ``neck_cfg.in_levels`` when given.
      rngs, dtype: as for every module.
    """
    name = _get(neck_cfg, "name", None)
    if name not in THESIS_NECKS:
        raise ValueError(f"build_neck_thesis builds {THESIS_NECKS}, got neck name {name!r}")
    in_levels = _get(neck_cfg, "in_levels", None)
    if in_levels is not None:
        missing = [l for l in in_levels if l not in in_channels]
        if missing:
            raise ValueError(f"neck.in_levels {tuple(in_levels)}: backbone provides no levels {missing}")
        in_channels = {l: in_channels[l] for l in in_levels}
    in_channels = dict(in_channels)
    g = lambda key, default=None: _get(neck_cfg, key, _DEFAULTS.get(key, default))  # noqa: E731
    common = dict(
        out_levels=tuple(g("out_levels")), channels=g("channels"), extra_source=g("extra_source"),
        dtype=dtype, rngs=rngs,
    )
    if name == "defenc":
        from msvision.models.necks.defenc import DefEncoder

        return DefEncoder(
            in_channels, num_layers=g("num_layers", 6), num_heads=g("num_heads", 8),
            num_points=g("num_points", 4), ffn_dim=g("ffn_dim", 2048), dropout=g("dropout", 0.0),
            msda_impl=g("msda_impl", "auto"), remat=g("remat", False), **common,
        )
    common["num_groups"] = g("num_groups")
    if name == "bifpn":
        from msvision.models.necks.bifpn import BiFPN

        return BiFPN(in_channels, num_layers=g("num_layers", 7), **common)
    common.update(num_layers=g("num_layers", 1), num_bottlenecks=g("num_bottlenecks", 1),
                  hidden_channels=g("hidden_channels"))
    if name == "tpn":
        from msvision.models.necks.tpn import TPN

        return TPN(in_channels, **common)
    from msvision.models.necks.bfpn import BottleneckFPN

    return BottleneckFPN(in_channels, bottlenecks_first=(name == "bfpn"), **common)
