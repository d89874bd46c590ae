"""``caffe.draw``: ``caffepy.draw`` (drawing nets with pydot) under pycaffe's name.

This module replaces itself with ``caffepy.draw`` in ``sys.modules``, so both names give
the same module object (``caffe.draw is caffepy.draw``); ``python -m caffe.draw`` runs its
command line.
"""
import sys

from caffepy import draw as _module

if __name__ == "__main__":          # python -m caffe.draw: pycaffe's draw_net.py
    sys.exit(_module.main())
sys.modules[__name__] = _module
