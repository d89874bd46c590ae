"""pycaffe's ``caffe.io``: BlobProto/Datum <-> array conversion, image loading, resizing,
oversampling and the ``Transformer`` that prepares images for a net's input blob.

The functions have pycaffe's names, arguments, return types and numbers, so a pycaffe script
runs unchanged with ``import caffepy as caffe``. Where pycaffe relies on scikit-image
(``load_image``, ``resize_image``) the same computation is done with Pillow and NumPy:

* ``load_image`` reads with Pillow and scales as ``skimage.img_as_float`` does (uint8 / 255,
  uint16 / 65535), greying with skimage's ``rgb2gray`` weights (0.2125, 0.7154, 0.0721).
  16-bit colour PNGs are read by Pillow as 8-bit, so their values are the high byte / 255
  instead of the 16-bit value / 65535 (a difference below 1/255).
* ``resize_image`` reproduces ``skimage.transform.resize(order, mode='constant')`` for 1- and
  3-channel images (pixel-centre sample positions ``(d + 0.5)·in/out − 0.5``, outside pixels
  taken as the constant 0 of the normalised image, i.e. as the image minimum) and
  ``scipy.ndimage.zoom`` (corner-aligned) for other channel counts. Interpolation runs in
  float64, so results agree with skimage's to float32 rounding. Only ``interp_order`` 0
  (nearest) and 1 (bilinear) are implemented. scikit-image ≥ 0.15 additionally blurs
  (anti-aliases) when shrinking; Caffe-era scikit-image, which pycaffe was written
  against, does not, and neither does this function.

Like pycaffe, ``blobproto_to_array`` and ``datum_to_array`` (for ``float_data``) return
float64 arrays holding the stored float32 values exactly.
"""
import numpy as np

from .errors import TransformerError  # noqa: F401
from .data import datum as _datum
from .proto import blobproto as _blobproto

__all__ = ["blobproto_to_array", "array_to_blobproto", "arraylist_to_blobprotovector_str",
           "blobprotovector_str_to_arraylist", "array_to_datum", "datum_to_array",
           "load_image", "resize_image", "oversample", "Transformer"]


# -- proto / datum / ndarray conversion ----------------------------------------------
# Thin wrappers over caffepy's one BlobProto codec (caffepy.proto.blobproto) and Datum codec
# (caffepy.data.datum), giving pycaffe's types at this boundary.

def blobproto_to_array(blob, return_diff=False):
    """Convert a BlobProto to an array (its diff instead of its data if ``return_diff``).

    The legacy 4-D shape (num, channels, height, width) is used if any of it is set,
    otherwise ``shape.dim``. The values come from ``data`` (``diff``), as in pycaffe; a blob
    that holds only ``double_data`` (``double_diff``) is read from those. The array is
    float64, as in pycaffe. A count that does not fit the shape raises ProtoError.
    """
    return _blobproto.blobproto_to_array(blob, return_diff, dtype=np.float64,
                                         prefer_double=False)


def array_to_blobproto(arr, diff=None):
    """Convert an N-dimensional array (and optionally its diff) to a BlobProto with
    ``shape.dim`` set. As in pycaffe, the diff's shape is not checked."""
    return _blobproto.array_to_blobproto(arr, diff)


def arraylist_to_blobprotovector_str(arraylist):
    """Serialise a list of arrays as a BlobProtoVector (bytes)."""
    return _blobproto.arrays_to_blobprotovector(arraylist).SerializeToString()


def blobprotovector_str_to_arraylist(str):  # noqa: A002 (pycaffe's argument name)
    """Parse a serialised BlobProtoVector into a list of float64 arrays."""
    return _blobproto.blobprotovector_to_arrays(str, dtype=np.float64, prefer_double=False)


def array_to_datum(arr, label=None):
    """Convert a 3-D (channels × height × width) array to a Datum.

    uint8 arrays are stored as raw bytes in ``data``, any other dtype as ``float_data``.
    """
    return _datum.array_to_datum(arr, label)


def datum_to_array(datum):
    """Convert a Datum to a channels × height × width array (the label is ``datum.label``).

    Raw ``data`` gives a (writable) uint8 array, ``float_data`` float64, as in pycaffe. An
    encoded Datum (PNG/JPEG bytes) is decoded with Pillow as Caffe's DecodeDatumToCVMatNative
    does: 3 channels in BGR order for a colour image, 1 for a grey one.
    """
    arr = _datum.datum_to_array(datum, float_dtype=np.float64, allow_empty=True)
    return arr if arr.flags.writeable else arr.copy()


# -- image IO --------------------------------------------------------------------------

_GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)        # skimage.color.rgb2gray


def load_image(filename, color=True):
    """Load an image as a float32 array in [0, 1] (scikit-image's ``img_as_float``).

    Returns height × width × 3 (RGB order) if ``color``, else height × width × 1
    (colour images greyed with scikit-image's rgb2gray weights). A grey image loaded in
    colour has its channel repeated; an alpha channel is dropped.
    """
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("caffepy.io.load_image needs Pillow, the optional 'images' extra: "
                          "pip install 'caffepy[images]'") from None
    with Image.open(filename) as im:
        im.load()
        img = _pil_to_float(im, filename)
    if img.ndim == 3 and not color:
        img = (img[:, :, 0] * _GRAY_WEIGHTS[0] + img[:, :, 1] * _GRAY_WEIGHTS[1]
               + img[:, :, 2] * _GRAY_WEIGHTS[2])
    img = img.astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    return img


def _pil_to_float(im, filename):
    """A PIL image -> float64 H×W (grey) or H×W×3 (RGB) array scaled like img_as_float."""
    mode = im.mode
    if mode in ("1", "L", "LA", "La"):
        return np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    if mode.startswith("I;16"):
        return np.asarray(im, dtype=np.float64) / 65535.0
    if mode == "I":
        arr = np.asarray(im)
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
            raise ValueError("load_image: '%s' is a 32-bit integer image; only 8- and 16-bit "
                             "images are supported" % (filename,))
        return arr.astype(np.float64) / 65535.0          # 16-bit PNGs open as mode "I"
    if mode == "F":
        return np.asarray(im, dtype=np.float64)          # float images are kept as they are
    return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0


# -- resizing --------------------------------------------------------------------------

def _axis_taps(n_in, n_out, order, grid):
    """Source indices and weights along one axis.

    grid=True: skimage/ndimage grid mode, sample at (d + 0.5)·n_in/n_out − 0.5, with
    indices -1 and n_in standing for the outside constant. grid=False: ndimage.zoom's
    corner-aligned positions d·(n_in − 1)/(n_out − 1).
    """
    d = np.arange(n_out, dtype=np.float64)
    if grid:
        pos = (d + 0.5) * (float(n_in) / float(n_out)) - 0.5
    elif n_out > 1:
        pos = d * (float(n_in - 1) / float(n_out - 1))
    else:
        pos = np.zeros(1)
    if order == 0:
        i0 = np.floor(pos + 0.5).astype(np.int64)
        return np.clip(i0, 0, n_in - 1), None, None
    i0 = np.floor(pos).astype(np.int64)
    w1 = pos - i0
    if not grid:                        # corner-aligned: stay inside [0, n_in - 1]
        i0 = np.clip(i0, 0, max(n_in - 2, 0))
        w1 = np.clip(pos - i0, 0.0, 1.0)
    return i0, i0 + 1, w1


def _interp_axis(x, axis, n_out, order, grid):
    n_in = x.shape[axis]
    i0, i1, w1 = _axis_taps(n_in, n_out, order, grid)
    if order == 0:
        return np.take(x, i0, axis=axis)
    if grid:
        # pad with the constant 0 on both sides; index -1 -> 0, n_in -> n_in + 1
        pad = [(0, 0)] * x.ndim
        pad[axis] = (1, 1)
        x = np.pad(x, pad, mode="constant", constant_values=0.0)
        i0, i1 = i0 + 1, i1 + 1
    else:
        i1 = np.minimum(i1, n_in - 1)
    shape = [1] * x.ndim
    shape[axis] = n_out
    w1 = w1.reshape(shape)
    return np.take(x, i0, axis=axis) * (1.0 - w1) + np.take(x, i1, axis=axis) * w1


def _resize(im, new_dims, order, grid):
    out = np.asarray(im, dtype=np.float64)
    for axis in (0, 1):
        if grid or out.shape[axis] != new_dims[axis]:
            out = _interp_axis(out, axis, int(new_dims[axis]), order, grid)
    return out


def resize_image(im, new_dims, interp_order=1):
    """Resize an image array (height × width × K) to (new_dims[0], new_dims[1], K).

    ``interp_order`` 1 is bilinear, 0 nearest-neighbour. The result is float32. See the
    module docstring for how this matches pycaffe's scikit-image/scipy resize.
    """
    if interp_order not in (0, 1):
        raise ValueError("resize_image: interp_order must be 0 (nearest) or 1 (bilinear); "
                         "caffepy does not implement order %r" % (interp_order,))
    im = np.asarray(im)
    new_dims = tuple(int(d) for d in new_dims)
    if len(new_dims) != 2 or new_dims[0] <= 0 or new_dims[1] <= 0:
        raise ValueError("resize_image: new_dims must be (height, width) with positive sizes, "
                         "got %r" % (new_dims,))
    if im.ndim < 2:
        raise ValueError("resize_image: expected a height x width x K image, got shape %s"
                         % (im.shape,))
    if im.shape[-1] == 1 or im.shape[-1] == 3:
        im_min, im_max = im.min(), im.max()
        if im_max > im_min:
            # skimage only understands {1,3}-channel images in [0, 1]: normalise, resize, undo.
            im_std = (im - im_min) / (im_max - im_min)
            resized_std = _resize(im_std, new_dims, interp_order, grid=True)
            resized_std = np.clip(resized_std, 0.0, 1.0)        # skimage's clip=True
            resized_im = resized_std * (im_max - im_min) + im_min
        else:
            # the image is a constant -- avoid divide by 0
            ret = np.empty(new_dims + im.shape[2:], dtype=np.float32)
            ret.fill(im_min)
            return ret
    else:
        # scipy.ndimage.zoom (corner-aligned; integer images come back rounded to their dtype)
        resized_im = _resize(im, new_dims, interp_order, grid=False)
        if np.issubdtype(im.dtype, np.integer):
            info = np.iinfo(im.dtype)
            resized_im = np.clip(np.trunc(resized_im + np.where(resized_im >= 0, 0.5, -0.5)),
                                 info.min, info.max)
    return resized_im.astype(np.float32)


def oversample(images, crop_dims):
    """Crop images into the four corners, the centre, and their mirrored versions.

    ``images``: a list (or array) of height × width × K arrays of the same shape;
    ``crop_dims``: (height, width). Returns a float32 (10·N) × height × width × K array:
    for each image, the crops top-left, top-right, bottom-left, bottom-right, centre,
    then the same five mirrored left-right.
    """
    im_shape = np.array(images[0].shape)
    crop_dims = np.array(crop_dims)
    if len(im_shape) != 3 or crop_dims.shape != (2,):
        raise ValueError("oversample takes height x width x K images and crop_dims "
                         "(height, width); got image shape %s and crop_dims %s"
                         % (tuple(im_shape), crop_dims.tolist()))
    if crop_dims[0] > im_shape[0] or crop_dims[1] > im_shape[1]:
        raise ValueError("oversample: crop %d x %d is larger than the %d x %d images"
                         % (crop_dims[0], crop_dims[1], im_shape[0], im_shape[1]))
    im_center = im_shape[:2] / 2.0

    h_indices = (0, im_shape[0] - crop_dims[0])
    w_indices = (0, im_shape[1] - crop_dims[1])
    crops_ix = np.empty((5, 4), dtype=int)
    curr = 0
    for i in h_indices:
        for j in w_indices:
            crops_ix[curr] = (i, j, i + crop_dims[0], j + crop_dims[1])
            curr += 1
    crops_ix[4] = np.tile(im_center, (1, 2)) + np.concatenate([-crop_dims / 2.0,
                                                                crop_dims / 2.0])
    crops_ix = np.tile(crops_ix, (2, 1))

    crops = np.empty((10 * len(images), crop_dims[0], crop_dims[1], im_shape[-1]),
                     dtype=np.float32)
    ix = 0
    for im in images:
        for crop in crops_ix:
            crops[ix] = im[crop[0]:crop[2], crop[1]:crop[3], :]
            ix += 1
        crops[ix - 5:ix] = crops[ix - 5:ix, :, ::-1, :]  # flip for mirrors
    return crops


# -- pre-processing ------------------------------------------------------------------

class Transformer:
    """Transform input for feeding into a Net (pycaffe's ``caffe.io.Transformer``).

    ``inputs``: {input blob name: blob shape (N, C, H, W)}, e.g.
    ``{'data': net.blobs['data'].data.shape}``.
    """

    def __init__(self, inputs):
        self.inputs = inputs
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def __check_input(self, in_):
        if in_ not in self.inputs:
            raise TransformerError("{} is not one of the net inputs: {}".format(in_, self.inputs))

    def preprocess(self, in_, data):
        """Format input for Caffe.

        - convert to single (float32)
        - resize to the input blob's height × width (keeping the number of channels)
        - transpose dimensions (e.g. H×W×K -> K×H×W)
        - reorder channels (e.g. RGB -> BGR)
        - scale raw input (e.g. from [0, 1] to [0, 255] for ImageNet models)
        - subtract the mean
        - scale the result (input_scale)

        ``data``: an H'×W'×K array. Returns the K×H×W array for the blob.
        """
        self.__check_input(in_)
        caffe_in = np.asarray(data).astype(np.float32, copy=False)
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        in_dims = tuple(self.inputs[in_][2:])
        if tuple(caffe_in.shape[:2]) != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        if transpose is not None:
            caffe_in = caffe_in.transpose(transpose)
        if channel_swap is not None:
            caffe_in = caffe_in[channel_swap, :, :]
        if isinstance(data, np.ndarray) and np.may_share_memory(caffe_in, data):
            caffe_in = caffe_in.copy()          # never scale the caller's array in place
        if raw_scale is not None:
            caffe_in *= raw_scale
        if mean is not None:
            caffe_in -= mean
        if input_scale is not None:
            caffe_in *= input_scale
        return caffe_in

    def deprocess(self, in_, data):
        """Invert Caffe formatting; see preprocess()."""
        self.__check_input(in_)
        decaf_in = np.array(data).squeeze()
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            decaf_in /= input_scale
        if mean is not None:
            decaf_in += mean
        if raw_scale is not None:
            decaf_in /= raw_scale
        if channel_swap is not None:
            decaf_in = decaf_in[np.argsort(channel_swap), :, :]
        if transpose is not None:
            decaf_in = decaf_in.transpose(np.argsort(transpose))
        return decaf_in

    def set_transpose(self, in_, order):
        """Set the order of the input's dimensions after transposing, e.g. (2, 0, 1) to
        turn an H×W×K image into K×H×W."""
        self.__check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise TransformerError("Transpose order needs to have the same number of "
                                   "dimensions as the input.")
        self.transpose[in_] = order

    def set_channel_swap(self, in_, order):
        """Set the order in which to take the channels, e.g. (2, 1, 0) maps RGB to BGR.
        N.B. this assumes the channels are the first dimension AFTER transpose."""
        self.__check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise TransformerError("Channel swap needs to have the same number of "
                                   "dimensions as the input channels.")
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_, scale):
        """Set the scale of raw features s.t. the input blob = input * scale (e.g. 255 for
        models trained on [0, 255] images, as Python loads images in [0, 1])."""
        self.__check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """Set the mean to subtract for centring the data.

        ``mean``: a (C,) vector of channel means (broadcast over the image), or a C×H'×W' mean
        image (H'×W' for a 1-channel input; a 1×H'×W' image is subtracted from every channel).
        A mean image of another height × width than the input blob -- the usual 256×256
        ImageNet mean for a 227×227 input -- is resized to the input's size as pycaffe does:
        scaled to [0, 1] by its overall minimum and maximum, resized with :func:`resize_image`
        (bilinear), and scaled back. A C×1×1 mean holds channel means and is broadcast, not
        resized (pycaffe would blur it against its minimum at the borders). A channel count
        that fits neither way raises TransformerError naming both shapes.
        """
        self.__check_input(in_)
        mean = np.asarray(mean)
        in_shape = tuple(int(d) for d in self.inputs[in_][1:])
        if mean.ndim == 1:
            # broadcast channels
            if mean.shape[0] != in_shape[0]:
                raise TransformerError(
                    "Mean channels incompatible with input. The mean of '%s' has %d values but "
                    "the input shape %s has %d channels" % (in_, mean.shape[0], in_shape,
                                                           in_shape[0]))
            mean = mean[:, np.newaxis, np.newaxis]
            self.mean[in_] = mean
            return
        # elementwise mean
        ms = (1,) + mean.shape if mean.ndim == 2 else tuple(mean.shape)
        if len(ms) != 3:
            raise TransformerError("Mean shape invalid: the mean of '%s' has shape %s; it must "
                                   "be (C,), (C, H, W) or, for one channel, (H, W)"
                                   % (in_, tuple(mean.shape)))
        if len(in_shape) != 3 or (ms[0] != in_shape[0]
                                  and not (ms[0] == 1 and mean.ndim == 3)):
            raise TransformerError(
                "Mean shape incompatible with input shape. The mean of '%s' has shape %s "
                "(%d channel(s)) but the input is %s: the mean needs %s channels"
                % (in_, tuple(mean.shape), ms[0], in_shape,
                   in_shape[0] if len(in_shape) == 3 else "C x H x W"))
        if ms[1:] != in_shape[1:] and ms[1:] != (1, 1):
            mean = _resize_mean(mean.reshape(ms), in_shape[1:])
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Set the scale of preprocessed inputs s.t. the blob = blob * scale.
        N.B. input_scale is applied AFTER mean subtraction, raw_scale BEFORE."""
        self.__check_input(in_)
        self.input_scale[in_] = scale


def _resize_mean(mean, hw):
    """A C×H'×W' mean image resized to C×hw[0]×hw[1] the way pycaffe's Transformer.set_mean
    does: normalised to [0, 1] by its overall minimum and maximum, resized with resize_image,
    then scaled back (float64). A constant mean stays that constant."""
    m_min, m_max = mean.min(), mean.max()
    if not m_max > m_min:
        return np.full((mean.shape[0],) + tuple(hw), m_min, dtype=np.float64)
    normal_mean = (mean - m_min) / (m_max - m_min)
    resized = resize_image(normal_mean.transpose((1, 2, 0)), hw).transpose((2, 0, 1))
    return resized.astype(np.float64) * (float(m_max) - float(m_min)) + float(m_min)
