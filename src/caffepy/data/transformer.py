"""Caffe's DataTransformer: mean subtraction, scaling, cropping and mirroring of input data.

For every item: ``mirror = transform_param.mirror and Rand(2)`` (in any phase), then, with a
crop_size, the offsets ``h_off = Rand(H - crop + 1)``, ``w_off = Rand(W - crop + 1)`` at TRAIN
(the centre ``(H - crop) // 2`` at TEST). Each output value is

    out[c, h, w'] = (in[c, h + h_off, w + w_off] - mean) * scale,   w' = crop-1-w if mirrored

where a mean_file is indexed at the *uncropped* position and mean_value is one value or one per
channel (subtract, then scale). The random draws are made per item in this order (coin, h_off,
w_off), only for the draws Caffe makes. They come from ``caffepy.backend.rng()`` unless the
transformer has a generator of its own: ``init_rand()`` (Caffe's InitRand) gives it one seeded
from ``caffepy.backend.rng()``, so that a prefetching thread never draws from the main stream and
runs with the same random_seed transform identically.

The work is vectorised over the batch: a batch is cropped with one slice (TEST) or one fancy
index (random TRAIN offsets), then one subtract, one multiply and one flip of the mirrored items.
"""
import numpy as np

from .. import backend
from ..proto import ProtoError, caffe_pb2, read_mean_binaryproto
from .datum import datum_to_array
from .db import DataError


def _default_error(msg, *args):
    return DataError(msg % args if args else msg)


class DataTransformer:
    def __init__(self, param=None, phase=caffe_pb2.TRAIN, error=_default_error, rng=None):
        self.rng = rng              # numpy Generator, or None for caffepy.backend.rng()
        if param is None:
            param = caffe_pb2.TransformationParameter()
        self.param = param
        self.phase = phase
        self._error = error
        self.scale = np.float32(param.scale)
        self.crop_size = int(param.crop_size)
        self.mirror = bool(param.mirror)
        self.force_color = bool(param.force_color)
        self.force_gray = bool(param.force_gray)
        if self.force_color and self.force_gray:
            raise error("transform_param: cannot set both force_color and force_gray")
        self.mean = None            # C×H×W float32, from mean_file
        self.mean_values = None     # 1-D float32, from mean_value
        if param.HasField("mean_file"):
            if len(param.mean_value):
                raise error("transform_param: cannot specify mean_file and mean_value at the same time")
            try:
                mean = read_mean_binaryproto(param.mean_file)
            except (OSError, ProtoError) as e:
                raise error("cannot load transform_param.mean_file '%s': %s",
                            param.mean_file, e) from None
            if mean.ndim == 4 and mean.shape[0] == 1:
                mean = mean[0]
            if mean.ndim != 3:
                raise error("transform_param.mean_file '%s' must hold a 1 x C x H x W blob, got "
                            "shape %s", param.mean_file, mean.shape)
            self.mean = np.ascontiguousarray(mean, dtype=np.float32)
        elif len(param.mean_value):
            self.mean_values = np.asarray(param.mean_value, dtype=np.float32)

    @property
    def needs_rand(self):
        """Caffe's InitRand condition: random draws happen only with mirror or a TRAIN crop."""
        return self.mirror or (self.phase == caffe_pb2.TRAIN and self.crop_size > 0)

    def init_rand(self):
        """Caffe's InitRand: when this transformer makes random draws, give it its own
        generator seeded from ``caffepy.backend.rng()`` (one draw from the main stream)."""
        if self.needs_rand:
            self.rng = np.random.default_rng(int(backend.rng().integers(1 << 32)))
        return self.rng

    # -- shapes ---------------------------------------------------------------------
    def infer_shape(self, shape):
        """The C×h×w output shape for an input item of shape C×H×W (checked against the
        crop size and the mean)."""
        c, h, w = (int(d) for d in shape)
        crop = self.crop_size
        self._check(c, h, w)         # mean and crop against this item, before any forward
        return (c, crop, crop) if crop else (c, h, w)

    # -- randomness -----------------------------------------------------------------
    def _draw(self, n, height, width):
        """Per item: mirror coin, then crop offsets (Caffe's order). Returns (mirror, h, w)."""
        crop = self.crop_size
        mirror = np.zeros(n, dtype=bool)
        h_off = np.zeros(n, dtype=np.intp)
        w_off = np.zeros(n, dtype=np.intp)
        random_crop = crop and self.phase == caffe_pb2.TRAIN
        if crop and not random_crop:
            h_off[:] = (height - crop) // 2
            w_off[:] = (width - crop) // 2
        if self.mirror or random_crop:
            rng = self.rng if self.rng is not None else backend.rng()
            for i in range(n):
                if self.mirror:
                    mirror[i] = bool(rng.integers(2))
                if random_crop:
                    h_off[i] = rng.integers(height - crop + 1)
                    w_off[i] = rng.integers(width - crop + 1)
        return mirror, h_off, w_off

    # -- transforms -----------------------------------------------------------------
    def _check(self, c, h, w):
        crop = self.crop_size
        if c <= 0:
            raise self._error("the data must have at least one channel")
        if h < crop or w < crop:
            raise self._error("crop_size %d is larger than the data (%d x %d)", crop, h, w)
        if self.mean is not None and self.mean.shape != (c, h, w):
            raise self._error("the mean_file '%s' has shape %s but the data items are %s: the mean "
                              "must match the full (uncropped) data size", self.param.mean_file,
                              " x ".join(map(str, self.mean.shape)), " x ".join(map(str, (c, h, w))))
        if self.mean_values is not None and len(self.mean_values) not in (1, c):
            raise self._error("specify either 1 mean_value or as many as channels: %d (got %d)",
                              c, len(self.mean_values))

    def transform(self, batch, out=None):
        """Transform an N×C×H×W batch (uint8 or float) into a float32 N×C×h×w host array.

        ``out`` (optional) is an array to write into (NumPy or CuPy); it is returned.
        """
        batch = np.asarray(batch)
        if batch.ndim != 4:
            raise self._error("the transformer takes N x C x H x W data, got shape %s", batch.shape)
        n, c, h, w = batch.shape
        self._check(c, h, w)
        mirror, h_off, w_off = self._draw(n, h, w)
        crop = self.crop_size
        oh, ow = (crop, crop) if crop else (h, w)
        direct = (out is not None and isinstance(out, np.ndarray) and out.dtype == np.float32
                  and out.shape == (n, c, oh, ow))
        y = out if direct else np.empty((n, c, oh, ow), np.float32)
        mean = self.mean
        if self.needs_rand and n:
            # Per item: copy the (mirrored) crop and subtract the (mirrored) mean at its
            # uncropped position. Flipping input and mean together equals flipping the result.
            # (A slice copy per item is far cheaper than one fancy-indexed gather.)
            for i in range(n):
                ho, wo = int(h_off[i]), int(w_off[i])
                src = batch[i, :, ho:ho + oh, wo:wo + ow]
                m = None if mean is None else mean[:, ho:ho + oh, wo:wo + ow]
                if mirror[i]:
                    src = src[:, :, ::-1]
                    m = None if m is None else m[:, :, ::-1]
                y[i] = src
                if m is not None:
                    y[i] -= m
            mean = None
        else:
            ho, wo = (int(h_off[0]), int(w_off[0])) if n else (0, 0)
            y[...] = batch[:, :, ho:ho + oh, wo:wo + ow]            # cast into float32
            if mean is not None:
                mean = mean[:, ho:ho + oh, wo:wo + ow]
        if mean is not None:
            y -= mean
        elif self.mean_values is not None and self.mean is None:
            mv = self.mean_values
            y -= mv[:, None, None] if len(mv) > 1 else mv[0]
        if self.scale != 1:
            y *= self.scale
        if out is None or direct:
            return y
        xp = backend.array_module(out)
        out[...] = xp.asarray(y)
        return out

    def transform_array(self, item):
        """Transform one C×H×W array; returns a float32 C×h×w array."""
        item = np.asarray(item)
        if item.ndim != 3:
            raise self._error("expected a C x H x W array, got shape %s", item.shape)
        return self.transform(item[None])[0]

    def decode(self, datum, key=None):
        """A Datum's C×H×W array (encoded images decoded with force_color/force_gray)."""
        return datum_to_array(datum, self.force_color, self.force_gray, self._error, key)

    def transform_datum(self, datum):
        """Transform one Datum; returns a float32 C×h×w array."""
        return self.transform_array(self.decode(datum))

    def transform_items(self, items, out=None):
        """Transform a list of C×H×W arrays: one batched transform when they share a shape,
        otherwise item by item (allowed when crop_size makes the outputs equal)."""
        if not items:
            raise self._error("no data to transform")
        shapes = {it.shape for it in items}
        if len(shapes) == 1:
            if len({it.dtype for it in items}) == 1:
                batch = np.stack(items)
            else:
                batch = np.stack([np.asarray(it, dtype=np.float32) for it in items])
            return self.transform(batch, out)
        first = self.infer_shape(items[0].shape)
        res = np.empty((len(items),) + first, dtype=np.float32)
        for i, it in enumerate(items):
            shp = self.infer_shape(it.shape)
            if shp != first:
                raise self._error("item %d has shape %s but the first item of the batch has %s; "
                                  "items of one batch must be the same size (or be cropped to it "
                                  "with crop_size)", i, " x ".join(map(str, it.shape)),
                                  " x ".join(map(str, items[0].shape)))
            res[i] = self.transform_array(it)
        if out is None:
            return res
        xp = backend.array_module(out)
        out[...] = xp.asarray(res)
        return out
