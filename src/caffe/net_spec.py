"""``caffe.net_spec``: ``caffepy.net_spec`` (nets written in Python: layers, params, NetSpec,
to_proto) under pycaffe's name.

This module replaces itself with ``caffepy.net_spec`` in ``sys.modules``, so both names give
the same module object (``caffe.net_spec is caffepy.net_spec``).
"""
import sys

from caffepy import net_spec as _module

sys.modules[__name__] = _module
