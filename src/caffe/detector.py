"""``caffe.detector``: ``caffepy.detector`` (the Detector: a net run on image windows) under
pycaffe's name.

This module replaces itself with ``caffepy.detector`` in ``sys.modules``, so both names give
the same module object (``caffe.detector is caffepy.detector``).
"""
import sys

from caffepy import detector as _module

sys.modules[__name__] = _module
