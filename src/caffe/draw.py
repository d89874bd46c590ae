"""``caffe.draw``: ``caffepy.draw`` (drawing nets with pydot) under pycaffe's name.

This module replaces itself with ``caffepy.draw`` in ``sys.modules``, so both names give
the same module object (``caffe.draw is caffepy.draw``).
"""
import sys

from caffepy import draw as _module

sys.modules[__name__] = _module
