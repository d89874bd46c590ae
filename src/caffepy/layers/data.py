"""Data and input layers: Input, DummyData, MemoryData, HDF5Data, HDF5Output, and the
prefetching Data (LMDB/LevelDB), ImageData and WindowData.

None of them has a gradient: their backward does nothing (Caffe's empty Backward_cpu).
Like Caffe's data layers, their ``reshape`` does nothing: the tops get their shapes at
setup and each forward writes (and, where the data decides, reshapes) them.

Data, ImageData and WindowData load their batches in a background thread (caffepy.data.prefetch)
``data_param.prefetch`` batches ahead (default 4). ``layer.close()`` stops it; so does the layer
(or its Net) being garbage collected, and interpreter exit.

The layers read their parameters, check them and hand the reading to a source in caffepy.data:
``sources.DatumSource`` (Data), ``sources.ImageListSource`` (ImageData),
``window.WindowSampler`` (WindowData), ``hdf5.HDF5ListSource`` (HDF5Data) and
``sources.ArraySource`` (MemoryData).
"""
import logging

import numpy as np

from .. import backend, distributed, security
from ..data.db import WrappingCursor, open_db
from ..data.hdf5 import HDF5ListSource, load_h5py
from ..data.prefetch import Batch, Prefetcher, attach
from ..data.sources import (ArraySource, DatumSource, ImageListSource, database_error,
                            decode_record, dims_str, parse_image_list)
from ..data.transformer import DataTransformer
from ..data.window import WindowSampler, parse_window_file
from ..errors import DataError
from ..fillers import FillerError, fill_array
from ..size_limits import BlobSizeError, bytes_str, check_bytes
from ..layer import Layer, LayerError, register_layer
from ..proto import caffe_pb2

log = logging.getLogger("caffepy")


def _write(blob, arr):
    """Copy a host array into a blob's data (NumPy or CuPy)."""
    xp = backend.array_module(blob.data)
    blob.data[...] = xp.asarray(arr)


class DataLayerError(LayerError, DataError):
    """A data layer's source that cannot be read: a LayerError naming the layer and a
    DataError naming the file, database or record."""


def _error_factory(layer):
    """A DataLayerError maker naming ``layer`` that holds no reference to it (so a source,
    which a prefetch thread may use, does not keep the layer alive)."""
    prefix = "Layer '%s' (%s): " % (layer.name, layer.type)

    def error(msg, *args):
        return DataLayerError(prefix + (msg % args if args else msg))
    return error


def _data_share(phase):
    """(solver_count, solver_rank) when this solver reads every N-th record of a TRAIN source
    (data-parallel training, caffepy.distributed), else None (TEST nets read everything)."""
    count = distributed.solver_count()
    if count <= 1 or phase == caffe_pb2.TEST:
        return None
    return count, distributed.solver_rank()


class _NoGradLayer(Layer):
    """Base of the data layers: no bottoms, Reshape and Backward do nothing."""
    exact_num_bottom_blobs = 0

    def reshape(self, bottom, top):
        pass

    def backward_impl(self, top, propagate_down, bottom):
        pass

    def allow_force_backward(self, bottom_index):
        return False


# -- Input -----------------------------------------------------------------------------

@register_layer("Input")
class InputLayer(_NoGradLayer):
    """Declares net inputs: tops shaped by input_param.shape (one for all tops or one per top)."""
    min_top_blobs = 1

    def layer_setup(self, bottom, top):
        shapes = self.layer_param.input_param.shape
        if len(shapes) not in (0, 1, len(top)):
            raise self.error("must specify 'shape' once, once per top blob, or not at all: "
                             "%d tops vs. %d shapes", len(top), len(shapes))
        for i, t in enumerate(top):
            if len(shapes):
                dims = shapes[0 if len(shapes) == 1 else i].dim
                if any(d < 0 for d in dims):
                    raise self.error("input shape dimensions must be non-negative, got %s "
                                     "(top '%s')", list(dims), self.layer_param.top[i]
                                     if i < len(self.layer_param.top) else i)
                t.reshape(tuple(int(d) for d in dims))

    def forward_impl(self, bottom, top):
        for i, t in enumerate(top):
            if t.count == 0 and t.shape == ():        # never shaped (a () shape counts 1)
                raise self.error("top '%s' has no shape: give input_param { shape { dim: ... "
                                 "} } or reshape the blob (net.blobs['%s'].reshape(...)) "
                                 "before forward", self.layer_param.top[i],
                                 self.layer_param.top[i])


# -- DummyData -------------------------------------------------------------------------

@register_layer("DummyData")
class DummyDataLayer(_NoGradLayer):
    """Tops filled by fillers: constant-filled tops once at setup, the others every forward."""
    min_top_blobs = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.dummy_data_param
        num_top = len(top)
        nf = len(p.data_filler)
        if nf not in (0, 1, num_top):
            raise self.error("number of data fillers must be 0, 1 or equal to the number of tops: "
                             "%d; you specified %d data fillers", num_top, nf)
        legacy = len(p.num) or len(p.channels) or len(p.height) or len(p.width)
        if legacy:
            if len(p.shape):
                raise self.error("both shape and legacy fields (num, channels, height, width) "
                                 "were specified")
            for field in ("num", "channels", "height", "width"):
                k = len(getattr(p, field))
                if k not in (1, num_top):
                    raise self.error("must specify '%s' once, or once per top blob (%d); "
                                     "specified %d", field, num_top, k)
        elif len(p.shape) not in (1, num_top):
            raise self.error("must specify 'shape' once, or once per top blob (%d); specified %d",
                             num_top, len(p.shape))
        if nf == 0:
            fp = caffe_pb2.FillerParameter()
            fp.type = "constant"
            fp.value = 0
            self.fillers = [fp]
        elif nf == 1:
            self.fillers = [p.data_filler[0]]
        else:
            self.fillers = list(p.data_filler)
        self.refill = [f.type != "constant" for f in self.fillers]
        for i, t in enumerate(top):
            if legacy:
                def pick(field):
                    vals = getattr(p, field)
                    return int(vals[0] if len(vals) == 1 else vals[i])
                t.reshape((pick("num"), pick("channels"), pick("height"), pick("width")))
            else:
                t.reshape(tuple(int(d) for d in p.shape[0 if len(p.shape) == 1 else i].dim))
        # Fill the constant tops now; they are never filled again.
        self._fill(top, constant=True)

    def _fill(self, top, constant):
        for i, t in enumerate(top):
            fid = i if len(self.fillers) > 1 else 0
            if self.refill[fid] != constant:
                try:
                    _write(t, fill_array(self.fillers[fid], t.shape))
                except FillerError as e:
                    raise self.error("data_filler: %s", e) from None

    def forward_impl(self, bottom, top):
        self._fill(top, constant=False)


# -- MemoryData ------------------------------------------------------------------------

@register_layer("MemoryData")
class MemoryDataLayer(_NoGradLayer):
    """Serves batches of arrays handed over with ``reset``/``set_input_arrays`` (no transform),
    or of Datums added with ``add_datum_vector`` (transformed). Wraps around at the end."""
    exact_num_top_blobs = 2

    def layer_setup(self, bottom, top):
        p = self.layer_param.memory_data_param
        self.batch_size = int(p.batch_size)
        self.channels = int(p.channels)
        self.height = int(p.height)
        self.width = int(p.width)
        self.size = self.channels * self.height * self.width
        if self.batch_size * self.size <= 0:
            raise self.error("batch_size, channels, height, and width must be specified and "
                             "positive in memory_data_param")
        top[0].reshape((self.batch_size, self.channels, self.height, self.width))
        top[1].reshape((self.batch_size,))
        self._source = ArraySource()
        self.has_new_data = False
        self._transformer = None

    def reset(self, data, labels, n=None):
        """Serve ``data`` (N×C×H×W float32) and ``labels`` (N) from the next forward on.

        N must be a multiple of batch_size. The arrays are used as they are (no transform).
        """
        if data is None or labels is None:
            raise self.error("reset needs both data and labels")
        data = np.asarray(data)
        labels = np.asarray(labels)
        if n is None:
            n = data.shape[0] if data.ndim else 0
        n = int(n)
        if n <= 0:
            raise self.error("reset needs at least one item (got %d)", n)
        if n % self.batch_size != 0:
            raise self.error("the number of items (%d) must be a multiple of batch_size (%d)",
                             n, self.batch_size)
        if data.size < n * self.size:
            raise self.error("data holds %d values, but %d items of %d x %d x %d need %d",
                             data.size, n, self.channels, self.height, self.width, n * self.size)
        if labels.size < n:
            raise self.error("labels hold %d values, but there are %d items", labels.size, n)
        if self.layer_param.HasField("transform_param"):
            log.warning("%s does not transform array data on reset()", self.type)
        self._source.set(
            np.ascontiguousarray(data, dtype=np.float32).reshape(-1)[:n * self.size]
            .reshape(n, self.channels, self.height, self.width),
            np.ascontiguousarray(labels, dtype=np.float32).reshape(-1)[:n])

    def set_input_arrays(self, data, labels):
        """pycaffe's Net.set_input_arrays: data N×C×H×W float32, labels N (or N×1×1×1)."""
        data = np.asarray(data)
        labels = np.asarray(labels)
        if data.ndim != 4:
            raise self.error("data array must be 4-d (N x C x H x W), got shape %s", data.shape)
        if data.shape[1:] != (self.channels, self.height, self.width):
            raise self.error("data array has wrong dimensions %s: this layer takes N x %d x %d x %d",
                             dims_str(data.shape), self.channels, self.height, self.width)
        if labels.ndim == 4 and labels.shape[1:] == (1, 1, 1):
            labels = labels.reshape(labels.shape[0])
        if labels.ndim != 1:
            raise self.error("labels array must be 1-d (N) or N x 1 x 1 x 1, got shape %s",
                             labels.shape)
        if labels.shape[0] != data.shape[0]:
            raise self.error("data and labels must have the same first dimension (%d vs %d)",
                             data.shape[0], labels.shape[0])
        if data.shape[0] % self.batch_size != 0:
            raise self.error("first dimensions of input arrays (%d) must be a multiple of "
                             "batch size (%d)", data.shape[0], self.batch_size)
        self.reset(data, labels, data.shape[0])

    def _new_items(self, num, what, item):
        """Caffe's checks of AddDatumVector/AddMatVector; returns the layer's transformer."""
        if self.has_new_data:
            raise self.error("can't add %s until current data has been consumed", what)
        if num == 0:
            raise self.error("there is no %s to add", item)
        if num % self.batch_size != 0:
            raise self.error("the added data (%d items) must be a multiple of the batch size (%d)",
                             num, self.batch_size)
        if self._transformer is None:
            self._transformer = DataTransformer(self.layer_param.transform_param, self.phase,
                                                error=self.error)
        return self._transformer

    def _serve_transformed(self, items, labels, what):
        data = self._transformer.transform_items(items)
        if data.shape[1:] != (self.channels, self.height, self.width):
            raise self.error("the transformed %s are %s, but this layer takes %d x %d x %d", what,
                             dims_str(data.shape[1:]), self.channels, self.height, self.width)
        self._source.set(data, np.asarray(labels, dtype=np.float32).reshape(len(items)))
        self.has_new_data = True

    def add_datum_vector(self, datums):
        """Serve transformed Datums (their number must be a multiple of batch_size)."""
        t = self._new_items(len(datums), "data", "datum")
        self._serve_transformed([t.decode(d) for d in datums], [d.label for d in datums],
                                "datums")

    def add_mat_vector(self, images, labels):
        """Caffe's AddMatVector: serve transformed images (H×W×C uint8 arrays in OpenCV's BGR
        order, or H×W for grey) with their labels; their number must be a multiple of
        batch_size."""
        num = len(images)
        self._new_items(num, "mat", "mat")
        if len(labels) != num:
            raise self.error("%d images but %d labels", num, len(labels))
        items = []
        for img in images:
            img = np.asarray(img)
            if img.ndim == 2:
                img = img[:, :, None]
            if img.ndim != 3:
                raise self.error("images must be H x W x C (OpenCV layout), got shape %s",
                                 img.shape)
            items.append(np.ascontiguousarray(img.transpose(2, 0, 1)))
        self._serve_transformed(items, labels, "images")

    def set_batch_size(self, new_size):
        if self.has_new_data:
            raise self.error("can't change batch_size until current data has been consumed")
        self.batch_size = int(new_size)

    def forward_impl(self, bottom, top):
        src = self._source
        if src.data is None:
            raise self.error("no input arrays: call set_input_arrays(data, labels) (pycaffe) or "
                             "reset(data, labels, n) before the first forward")
        b = self.batch_size
        if src.n % b != 0:
            raise self.error("the number of items (%d) must be a multiple of batch_size (%d)",
                             src.n, b)
        top[0].reshape((b, self.channels, self.height, self.width))
        top[1].reshape((b, 1, 1, 1))
        data, labels, wrapped = src.next(b)
        _write(top[0], data)
        _write(top[1], labels.reshape(b, 1, 1, 1))
        if wrapped:
            self.has_new_data = False


# -- HDF5Data --------------------------------------------------------------------------

@register_layer("HDF5Data")
class HDF5DataLayer(_NoGradLayer):
    """Reads the datasets named after its tops from the .h5 files listed in a text file
    (caffepy.data.hdf5), batch_size rows per forward, optionally shuffled."""
    min_top_blobs = 1

    def layer_setup(self, bottom, top):
        if self.layer_param.HasField("transform_param"):
            log.warning("Layer '%s' (HDF5Data): transform_param is ignored: HDF5Data does not "
                        "transform its data (as in Caffe)", self.name)
        p = self.layer_param.hdf5_data_param
        self.batch_size = int(p.batch_size)
        if self.batch_size <= 0:
            raise self.error("hdf5_data_param.batch_size must be positive")
        self.top_names = list(self.layer_param.top)
        if len(self.top_names) != len(top):
            raise self.error("each top reads the dataset of its name, but the layer parameter "
                             "names %d tops and %d top blobs were given",
                             len(self.top_names), len(top))
        self.reader = HDF5ListSource(p.source, self.top_names, p.shuffle, _error_factory(self))
        self.reader.share = _data_share(self.phase)
        for t, shape in zip(top, self.reader.row_shapes):
            t.reshape((self.batch_size,) + shape)

    def forward_impl(self, bottom, top):
        self.reader.read_batch([t.data for t in top])


# -- HDF5Output ------------------------------------------------------------------------

@register_layer("HDF5Output")
class HDF5OutputLayer(Layer):
    """Writes bottom 0 to dataset "data" and bottom 1 to "label" of hdf5_output_param.file_name.

    The datasets get the blobs' legacy 4-D shape (num, channels, height, width). The file is
    created at setup and stays open until ``close()`` (or the layer is destroyed). Each forward
    replaces the datasets with the current batch (Caffe itself aborts on a second forward).
    """
    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 0

    def layer_setup(self, bottom, top):
        h5py = load_h5py(self.error)
        self.file_name = self.layer_param.hdf5_output_param.file_name
        if not self.file_name:
            raise self.error("hdf5_output_param.file_name must be set")
        refused = security.check_output_path(self.file_name)   # docs/security.md
        if refused:
            raise self.error("hdf5_output_param.file_name %s", refused)
        try:
            self._file = h5py.File(self.file_name, "w")
        except OSError as e:
            raise self.error("failed to open HDF5 file '%s' for writing: %s",
                             self.file_name, e) from None

    def reshape(self, bottom, top):
        pass

    @staticmethod
    def _legacy_shape(shape):
        return tuple(shape) + (1,) * (4 - len(shape))

    def forward_impl(self, bottom, top):
        if self._file is None:
            raise self.error("the output file '%s' was closed", self.file_name)
        for i, b in enumerate(bottom):
            if b.num_axes > 4:
                raise self.error("cannot save bottom %d of shape %s: HDF5Output stores blobs "
                                 "with at most 4 axes", i, dims_str(b.shape))
        dshape = self._legacy_shape(bottom[0].shape)
        lshape = self._legacy_shape(bottom[1].shape)
        if dshape[0] != lshape[0]:
            raise self.error("data blob and label blob must have the same batch size (%d vs %d)",
                             dshape[0], lshape[0])
        f = self._file
        for name, b, shp in (("data", bottom[0], dshape), ("label", bottom[1], lshape)):
            arr = np.asarray(backend.to_numpy(b.data), dtype=np.float32).reshape(shp)
            if name in f:
                del f[name]
            f.create_dataset(name, data=arr)
        f.flush()

    def backward_impl(self, top, propagate_down, bottom):
        pass

    def allow_force_backward(self, bottom_index):
        return False

    def close(self):
        f = getattr(self, "_file", None)
        if f is not None:
            self._file = None
            try:
                f.close()
            except Exception:
                pass

    def __del__(self):
        self.close()


# -- prefetching data layers -----------------------------------------------------------

def _transform_param(layer_param, legacy=None, fields=("scale", "mean_file", "crop_size", "mirror")):
    """The layer's transform_param. As in Caffe 1.0, the deprecated transformation fields of
    the layer's own parameter (``legacy``: data_param, image_data_param, window_data_param) are
    NOT applied: Caffe's upgrade moves them into transform_param only for old ``layers { }``
    nets (caffepy's upgrade does the same). A warning names each ignored field."""
    dp = layer_param.data_param if legacy is None else legacy
    where = next(f.name for f in layer_param.DESCRIPTOR.fields if f.message_type is dp.DESCRIPTOR)
    for field in fields:
        if dp.HasField(field):
            log.warning("Layer '%s' (%s): %s.%s is deprecated and ignored, as in Caffe; set it in "
                        "transform_param", layer_param.name, layer_param.type, where, field)
    tp = caffe_pb2.TransformationParameter()
    tp.CopyFrom(layer_param.transform_param)
    return tp


class _PrefetchingDataLayer(_NoGradLayer):
    """Caffe's BasePrefetchingDataLayer: a source loads batches in a background thread
    (``data_param.prefetch`` of them ahead, default 4; 0 loads each batch in forward), and
    forward copies the next one into the tops. ``close()`` stops the thread and releases the
    files; so does garbage collection of the layer (and so of its Net)."""
    _prefetcher = None
    _finalizer = None

    def _start_prefetch(self, source, data_shape, label_shape):
        n = int(self.layer_param.data_param.prefetch)
        count = 1
        for d in data_shape:
            count *= d
        check_bytes(n * count * 4, "data_param.prefetch %d batches of shape %s (float32, %s "
                    "each)" % (n, dims_str(data_shape), bytes_str(count * 4)),
                    lambda msg: self.error("%s", msg))
        batches = [Batch(np.empty(data_shape, np.float32),
                         None if label_shape is None else np.empty(label_shape, np.float32))
                   for _ in range(n)]
        self._prefetcher = Prefetcher(source, batches, name=self.name)
        self._finalizer = attach(self, self._prefetcher)

    @property
    def prefetcher(self):
        return self._prefetcher

    @property
    def prefetch_thread(self):
        """The background thread (None with prefetch 0 or before setup)."""
        return None if self._prefetcher is None else self._prefetcher.thread

    def forward_impl(self, bottom, top):
        if self._prefetcher is None:
            raise self.error("the layer was not set up")
        batch = self._prefetcher.next()
        try:
            top[0].reshape(batch.data.shape)
            _write(top[0], batch.data)
            if len(top) > 1:
                top[1].reshape(batch.label.shape)
                _write(top[1], batch.label)
        except BlobSizeError as e:
            raise self.error("top '%s': %s", self.layer_param.top[0], e) from None
        finally:
            self._prefetcher.release(batch)

    def close(self):
        """Stop the prefetch thread and close the data source (idempotent)."""
        if self._finalizer is not None:
            self._finalizer()
        elif self._prefetcher is not None:
            self._prefetcher.stop()


# -- Data (LMDB / LevelDB) -------------------------------------------------------------

@register_layer("Data")
class DataLayer(_PrefetchingDataLayer):
    """Reads Datum records in key order from an LMDB or LevelDB (data_param), transforms them
    (transform_param) and serves batches: top 0 the data, optional top 1 the labels.

    A background thread keeps ``data_param.prefetch`` batches (default 4) ready. The layer owns
    one cursor; the random draws of its transformer (mirror, crop) come from a generator of its
    own, seeded from ``caffepy.backend.rng()`` at setup, so runs with the same random_seed read
    and transform identically.
    """
    min_top_blobs = 1
    max_top_blobs = 2

    def layer_setup(self, bottom, top):
        p = self.layer_param.data_param
        if p.batch_size <= 0:
            raise self.error("data_param.batch_size must be positive")
        if not p.source:
            raise self.error("data_param.source must name a database")
        error = _error_factory(self)
        self.batch_size = int(p.batch_size)
        self.output_labels = len(top) > 1
        self.transformer = DataTransformer(_transform_param(self.layer_param), self.phase,
                                           error=error)
        self.transformer.init_rand()
        db = open_db(p.source, p.backend, error)
        try:
            cursor = WrappingCursor(db, error)
            # data_param.rand_skip is DEPRECATED and unused by Caffe 1.0's DataLayer: reading
            # always starts at the first key (ImageData still honours its own rand_skip).
            _, item = decode_record(self.transformer, cursor.key(), cursor.value(),
                                    database_error(error, p.source))
            shape = (self.batch_size,) + self.transformer.infer_shape(item.shape)
        except BaseException:
            db.close()
            raise
        top[0].reshape(shape)
        if self.output_labels:
            top[1].reshape((self.batch_size,))
        source = DatumSource(db, cursor, self.batch_size, self.transformer, error)
        source.share = _data_share(self.phase)
        self._start_prefetch(source, shape, (self.batch_size,))


# -- ImageData -------------------------------------------------------------------------

@register_layer("ImageData")
class ImageDataLayer(_PrefetchingDataLayer):
    """Reads the images of a list file ("path label" per line, split at the last space) under
    ``root_folder`` (prepended as a string, as Caffe does), in colour (BGR) or grey (is_color),
    resized to new_height × new_width if both are set (OpenCV's bilinear resize), optionally
    shuffled at setup and at every wrap, then transformed (transform_param). Decoding needs
    Pillow (the 'images' extra)."""
    exact_num_top_blobs = 2

    def layer_setup(self, bottom, top):
        p = self.layer_param.image_data_param
        error = _error_factory(self)
        nh, nw = int(p.new_height), int(p.new_width)
        if (nh == 0) != (nw == 0):
            raise self.error("new_height and new_width must be set together (got %d and %d)",
                             nh, nw)
        if p.batch_size <= 0:
            raise self.error("image_data_param.batch_size must be positive")
        if not p.source:
            raise self.error("image_data_param.source must name an image list file")
        self.batch_size = int(p.batch_size)
        self.transformer = DataTransformer(_transform_param(self.layer_param, p), self.phase,
                                           error=error)
        self.transformer.init_rand()
        lines = parse_image_list(p.source, error)
        if (not p.shuffle and not p.rand_skip and self.phase == caffe_pb2.TRAIN
                and distributed.solver_rank() > 0):
            # as Caffe: every solver reads the whole list in the same order
            log.warning("Layer '%s' (ImageData): shuffle or rand_skip recommended when %d "
                        "processes train together: each reads the same images in the same "
                        "order", self.layer_param.name, distributed.solver_count())
        shuffle_rng = None
        if p.shuffle:
            shuffle_rng = np.random.default_rng(int(backend.rng().integers(1 << 32)))
            shuffle_rng.shuffle(lines)
        start = 0
        if p.rand_skip:
            start = int(backend.rng().integers(p.rand_skip))
            if start >= len(lines):
                raise self.error("not enough images (%d) to skip %d (rand_skip %d)", len(lines),
                                 start, p.rand_skip)
        src = ImageListSource(lines, p.source, p.root_folder, self.batch_size, nh, nw,
                              p.is_color, self.transformer, shuffle_rng, start, error)
        first = src.read(start)
        shape = (self.batch_size,) + self.transformer.infer_shape(first.shape)
        top[0].reshape(shape)
        top[1].reshape((self.batch_size,))
        self.num_images = len(lines)
        self._start_prefetch(src, shape, (self.batch_size,))


# -- WindowData ------------------------------------------------------------------------

@register_layer("WindowData")
class WindowDataLayer(_PrefetchingDataLayer):
    """R-CNN fine-tuning data: windows sampled from a window file (see caffepy.data.window).

    As in Caffe, the pixel scale is ``window_data_param.scale`` (transform_param.scale is not
    used), crop_size (required), mirror and mean_file/mean_value come from transform_param, and
    images are read in colour. Reading needs Pillow (the 'images' extra)."""
    exact_num_top_blobs = 2

    def layer_setup(self, bottom, top):
        p = self.layer_param.window_data_param
        error = _error_factory(self)
        tp = _transform_param(self.layer_param, p, ("mean_file", "crop_size", "mirror"))
        if tp.HasField("scale") and tp.scale != 1 and not p.HasField("scale"):
            log.warning("Layer '%s' (WindowData): transform_param.scale is ignored, as in "
                        "Caffe; set window_data_param.scale", self.name)
        crop = int(tp.crop_size)
        if crop <= 0:
            raise self.error("transform_param.crop_size must be positive: WindowData warps "
                             "every window to crop_size x crop_size")
        if p.batch_size <= 0:
            raise self.error("window_data_param.batch_size must be positive")
        if p.crop_mode not in ("warp", "square"):
            raise self.error("window_data_param.crop_mode must be 'warp' or 'square', got '%s'",
                             p.crop_mode)
        if 2 * p.context_pad >= crop:
            raise self.error("context_pad %d leaves nothing of crop_size %d", p.context_pad, crop)
        if not 0 <= p.fg_fraction <= 1:
            raise self.error("fg_fraction must be in [0, 1], got %g", p.fg_fraction)
        # The transformer only reads and checks the mean; WindowData transforms by itself.
        transformer = DataTransformer(tp, self.phase, error=error)
        images, fg, bg = parse_window_file(p.source, p.root_folder, p.fg_threshold,
                                           p.bg_threshold, error)
        channels = images[-1][1][0]
        for path, (c, h, w) in images:
            if c != 3:
                raise self.error("image '%s' is listed with %d channels: WindowData reads images "
                                 "in colour (3 channels)", path, c)
        bs = int(p.batch_size)
        num_fg = int(np.float32(bs) * np.float32(p.fg_fraction))
        if num_fg > 0 and len(fg) == 0:
            raise self.error("the window file '%s' has no foreground windows (overlap >= "
                             "fg_threshold %g)", p.source, p.fg_threshold)
        if bs - num_fg > 0 and len(bg) == 0:
            raise self.error("the window file '%s' has no background windows (overlap < "
                             "bg_threshold %g)", p.source, p.bg_threshold)
        mean = transformer.mean
        mean_values = None
        if mean is not None:
            mc, mh, mw = mean.shape
            off = (mw - crop) // 2
            if mc != channels or mw < crop or off + crop > mh:
                raise self.error("the mean_file '%s' is %s; WindowData needs %d channels and at "
                                 "least %d x %d (it reads the centred crop)", tp.mean_file,
                                 dims_str(mean.shape), channels, crop, crop)
        elif transformer.mean_values is not None:
            mv = transformer.mean_values
            if len(mv) not in (1, channels):
                raise self.error("specify either 1 mean_value or as many as channels: %d",
                                 channels)
            mean_values = np.broadcast_to(mv, (channels,)).astype(np.float32)
        rng = np.random.default_rng(int(backend.rng().integers(1 << 32)))
        sampler = WindowSampler(images, fg, bg, bs, crop, channels, p.fg_fraction,
                                p.context_pad, p.crop_mode, tp.mirror, p.scale, mean,
                                mean_values, p.cache_images, rng, error)
        shape = (bs, channels, crop, crop)
        top[0].reshape(shape)
        top[1].reshape((bs,))
        self.batch_size = bs
        self._start_prefetch(sampler, shape, (bs,))
