"""``caffe.classifier``: ``caffepy.classifier`` (the Classifier) under pycaffe's name.

This module replaces itself with ``caffepy.classifier`` in ``sys.modules``, so both names give
the same module object (``caffe.classifier is caffepy.classifier``).
"""
import sys

from caffepy import classifier as _module

sys.modules[__name__] = _module
