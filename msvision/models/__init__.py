"""Models: backbones → necks → heads, assembled by :func:`build.build_model`."""
