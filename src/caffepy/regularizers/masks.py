"""Connectivity masks: freeze the zero weights while fine-tuning a sparse net (the SSL fork's
``connectivity_mode``).

A Convolution, Deconvolution or InnerProduct layer with ``connectivity_mode`` other than
CONNECTED gets a mask on its weights (blob 0; biases are never masked), computed from the
weights once they are loaded:

- first every weight with ``-threshold < w < threshold`` (threshold 1e-4, compared in double
  as the fork) is set to 0;
- DISCONNECTED_ELTWISE: mask = 1 where ``|w| >= threshold``, else 0;
- DISCONNECTED_GRPWISE: view the weights as M = shape[0] rows × C = count/M columns and split
  the rows into the layer's conv groups; within each group, every element of an all-zero row or
  of an all-zero column gets 0 (exact ``w != 0`` test), every other element 1.

The update then multiplies the diff by the mask before ``data -= diff`` (``apply_mask``); the
momentum history is not masked. The mask is not saved in any file.

What the Net does, after weights are loaded::

    from caffepy.regularizers import masks
    net_masks = masks.net_connectivity_masks(net)       # {learnable param id: mask}; logs
    ...
    for param_id, mask in net_masks.items():            # in Net.update, before data -= diff
        masks.apply_mask(net.learnable_params[param_id].diff, mask)
"""
import logging

import numpy as np

from .. import backend
from ..proto import caffe_pb2
from .base import layer_conv_group

log = logging.getLogger("caffepy")

ZEROUT_THRESHOLD = 1e-4
CONNECTED = caffe_pb2.LayerParameter.CONNECTED
DISCONNECTED_ELTWISE = caffe_pb2.LayerParameter.DISCONNECTED_ELTWISE
DISCONNECTED_GRPWISE = caffe_pb2.LayerParameter.DISCONNECTED_GRPWISE
MASKED_LAYER_TYPES = ("Convolution", "Deconvolution", "InnerProduct")


def connectivity_mode(mode):
    """The ConnectivityMode number of ``mode`` (a number or its name)."""
    if isinstance(mode, str):
        return caffe_pb2.LayerParameter.ConnectivityMode.Value(mode)
    mode = int(mode)
    caffe_pb2.LayerParameter.ConnectivityMode.Name(mode)       # ValueError when unknown
    return mode


def threshold_like(data, threshold):
    """``threshold`` (a double, as the fork compares) as a scalar of ``data``'s dtype that gives
    the same answers to ``|w| < t`` and ``|w| >= t``: for float32 weights the smallest float32
    >= t.  Comparing with a float64 scalar would depend on NumPy's promotion rules (NumPy 1.x
    compares float32 arrays with a float64 scalar in float32, NumPy 2 in float64)."""
    if data.dtype != np.float32:
        return np.float64(threshold)
    t = np.float32(threshold)
    if float(t) < float(threshold):
        t = np.nextafter(t, np.float32(np.inf))
    return t


def zerout(data, threshold=ZEROUT_THRESHOLD, scratch=None):
    """In place: ``w = 0`` wherever ``-threshold < w < threshold`` (NaN stays NaN).

    ``scratch`` (optional) is a pair (float buffer, bool buffer) the shape of ``data``, for an
    allocation-free call every iteration.
    """
    xp = backend.array_module(data)
    thr = threshold_like(data, threshold)
    if scratch is None:
        small = xp.abs(data) < thr
    else:
        tmp, small = scratch
        xp.abs(data, out=tmp)
        xp.less(tmp, thr, out=small)
    xp.copyto(data, 0, where=small)
    return data


def connectivity_mask(data, mode, conv_group=1, threshold=ZEROUT_THRESHOLD):
    """The float32 mask (shape of ``data``, same array module) of ``mode`` for weights
    ``data``; zeroes the weights with |w| < threshold in ``data`` first. CONNECTED gives None."""
    mode = connectivity_mode(mode)
    if mode == CONNECTED:
        return None
    xp = backend.array_module(data)
    zerout(data, threshold)
    if mode == DISCONNECTED_ELTWISE:
        return (xp.abs(data) >= threshold_like(data, threshold)).astype(np.float32)
    shape = data.shape
    m = shape[0] if len(shape) else 1
    count = int(data.size)
    c = count // m if m else 0
    g = int(conv_group) if conv_group else 1
    if m % g:
        raise ValueError("%d rows do not split into %d conv groups" % (m, g))
    nz = (data.reshape(g, m // g, c) != 0)
    keep = nz.any(axis=2, keepdims=True) & nz.any(axis=1, keepdims=True)
    return keep.astype(np.float32).reshape(shape)


def connectivity_message(layer_name, mode):
    """The log line of ``mode`` for layer ``layer_name`` (None for CONNECTED)."""
    mode = connectivity_mode(mode)
    if mode == DISCONNECTED_ELTWISE:
        return "all zero weights of %s are frozen" % layer_name
    if mode == DISCONNECTED_GRPWISE:
        return "weights lying in all-zero groups of %s are frozen" % layer_name
    return None


def layer_connectivity_mask(layer, layer_name=None, threshold=ZEROUT_THRESHOLD):
    """The weights mask of ``layer`` from its ``connectivity_mode`` (None when CONNECTED, when
    the layer has no weights, or for a layer type without masks); zeroes its small weights and
    logs the fork's line."""
    lp = layer.layer_param
    mode = lp.connectivity_mode
    if mode == CONNECTED or not len(layer.blobs):
        return None
    name = layer_name or lp.name
    if lp.type not in MASKED_LAYER_TYPES:
        log.warning("connectivity_mode of layer %s (%s) has no effect: only %s layers are "
                    "masked", name, lp.type, ", ".join(MASKED_LAYER_TYPES))
        return None
    group = layer_conv_group(lp) if lp.type != "InnerProduct" else 1
    mask = connectivity_mask(layer.blobs[0].data, mode, group, threshold)
    log.info(connectivity_message(name, mode))
    return mask


def net_connectivity_masks(net, threshold=ZEROUT_THRESHOLD):
    """{learnable param id: mask} for the weights of every layer of ``net`` whose
    connectivity_mode is not CONNECTED (computed from the current weights, which are zeroed
    below the threshold; one log line per layer)."""
    masks = {}
    learnable = {id(b): k for k, b in enumerate(net.learnable_params)}
    for li, layer in enumerate(net.layers):
        mask = layer_connectivity_mask(layer, net.layer_names[li], threshold)
        if mask is None:
            continue
        k = learnable.get(id(layer.blobs[0]))
        if k is None:               # a layer sharing another layer's weights: the owner's id
            try:
                k = net.learnable_param_ids[net.param_id_vecs[li][0]]
            except (AttributeError, IndexError):
                continue
        masks[k] = mask
    return masks


def apply_mask(diff, mask):
    """``diff *= mask`` in place (before ``data -= diff``)."""
    diff *= mask
    return diff
