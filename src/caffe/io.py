"""``caffe.io``: ``caffepy.io`` (BlobProto and Datum conversions, image loading, the
Transformer) under pycaffe's name.

This module replaces itself with ``caffepy.io`` in ``sys.modules``, so both names give
the same module object (``caffe.io is caffepy.io``).
"""
import sys

from caffepy import io as _module

sys.modules[__name__] = _module
