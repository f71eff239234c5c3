"""Necks: feature pyramid in, feature pyramid out (see ``base.Neck``)."""

from msvision.models.necks.base import InitialPyramid, Neck
from msvision.models.necks.fpn import FPN

__all__ = ["FPN", "InitialPyramid", "Neck"]
