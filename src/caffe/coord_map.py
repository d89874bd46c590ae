"""``caffe.coord_map``: ``caffepy.coord_map`` (coordinate maps between net_spec tops, and
crop()) under pycaffe's name.

This module replaces itself with ``caffepy.coord_map`` in ``sys.modules``, so both names give
the same module object (``caffe.coord_map is caffepy.coord_map``).
"""
import sys

from caffepy import coord_map as _module

sys.modules[__name__] = _module
