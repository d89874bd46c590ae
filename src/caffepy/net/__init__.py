"""caffepy.net: the Net and the steps that build it.

``build`` (Net::Init's steps as functions), ``net`` (the Net class: construction driver,
forward/backward, update), ``weights`` (copy_from/save, binary and HDF5) and ``accessors``
(pycaffe's dictionaries and array calls).
"""
from ..errors import NetError
from .build import (filter_net, insert_splits, load_net_param, split_blob_name,  # noqa: F401
                    split_layer_name, state_meets_rule)
from .net import Net

__all__ = ["Net", "NetError", "filter_net", "insert_splits", "load_net_param",
           "split_blob_name", "split_layer_name", "state_meets_rule"]
