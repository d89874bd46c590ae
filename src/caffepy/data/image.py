"""Image decoding and resizing as Caffe's OpenCV calls do them, with Pillow and NumPy.

* ``decode_image(bytes, mode)`` and ``read_image(path, is_color, new_height, new_width)`` return
  C×H×W uint8 arrays in OpenCV's channel order (BGR), with OpenCV's channel rules:
  ``"color"`` (IMREAD_COLOR) always gives 3 channels, ``"gray"`` (IMREAD_GRAYSCALE) 1, and
  ``"native"`` (IMREAD_ANYCOLOR, Caffe's DecodeDatumToCVMatNative) 3 for any colour image
  (alpha dropped) and 1 for a grey one. 16-bit images become 8-bit (the high byte).
* ``resize_bilinear(img, height, width)`` is OpenCV's ``cv::resize(..., INTER_LINEAR)`` for
  uint8 images: the same sample positions (``(d + 0.5)·scale − 0.5``, clamped at the borders),
  11-bit fixed-point weights and integer rounding, and the exact 2× shrink that OpenCV turns
  into a 2×2 average (INTER_AREA). It is not antialiased (Pillow's BILINEAR is, when shrinking).
  OpenCV's vectorised and scalar code paths round slightly differently; this follows the
  vectorised one, so a few values may differ from a given OpenCV build by 1.

Pixel values of decoded images can differ from Caffe's where the decoders differ: JPEG
(libjpeg version, IDCT and chroma upsampling of Pillow's libjpeg vs OpenCV's) and colour to
grey conversion of non-JPEG files (OpenCV's 0.299/0.587/0.114 fixed-point formula is used here;
grey JPEGs are decoded as libjpeg's luma channel, as OpenCV does). PNG is lossless and decodes
identically. EXIF orientation is not applied.
"""
import io

import numpy as np

from ..errors import DataError
from ..size_limits import check_bytes, max_image_pixels


def _default_error(msg, *args):
    return DataError(msg % args if args else msg)


def _pil(error, what):
    try:
        from PIL import Image
    except ImportError:
        raise error("%s needs Pillow, the optional 'images' extra: pip install 'caffepy[images]'",
                    what) from None
    return Image


_MODES = {"native", "color", "gray"}


def _to_bgr_array(img, mode, error, where):
    """A loaded PIL image -> C×H×W uint8 in OpenCV's channel order for the read mode."""
    pil_mode = img.mode
    if pil_mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        if pil_mode == "I" and arr.max(initial=0) > 65535:
            raise error("%s: unsupported 32-bit integer image", where)
        gray = (arr.astype(np.uint32) >> 8).astype(np.uint8)          # libpng strip_16
        if mode == "color":
            return np.repeat(gray[None], 3, axis=0)
        return gray[None].copy()
    if pil_mode == "F":
        raise error("%s: floating-point images are not supported (need 8-bit data)", where)
    if pil_mode in ("1", "L", "LA", "La"):
        gray = np.asarray(img.convert("L"), dtype=np.uint8)
        if mode == "gray" or (mode == "native" and pil_mode in ("1", "L")):
            return gray[None].copy()
        return np.repeat(gray[None], 3, axis=0)                      # grey -> BGR
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)             # drops alpha, expands P
    if mode == "gray":
        return rgb_to_gray(rgb)[None]
    return np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1))  # RGB -> BGR planes


def rgb_to_gray(rgb):
    """OpenCV's fixed-point RGB -> grey: (R·4899 + G·9617 + B·1868 + 8192) >> 14."""
    r = rgb[..., 0].astype(np.uint32)
    g = rgb[..., 1].astype(np.uint32)
    b = rgb[..., 2].astype(np.uint32)
    return ((r * 4899 + g * 9617 + b * 1868 + 8192) >> 14).astype(np.uint8)


class _TooLarge(Exception):
    """An image refused from its header (the message says why); reported by the caller."""


def _check_size(Image, img, error, where, resize_pixels):
    """Refuse, from the header and before decoding, an image with more pixels than
    max_image_pixels() (or than the resize target ``resize_pixels``, when that is larger) or
    whose decoded float32 planes would not fit the blob limit."""
    w, h = img.size
    limit = max(max_image_pixels(), resize_pixels)
    if w * h > limit:
        raise error("%s is %d x %d pixels (width x height), more than the %d pixels caffepy "
                    "decodes (set CAFFEPY_MAX_IMAGE_PIXELS to allow more)", where, w, h, limit)
    bands = max(len(img.getbands()), 3)
    check_bytes(w * h * bands * 4, "%s (%d x %d pixels, decoded as float32)" % (where, w, h),
                lambda msg: error("%s", msg))


def _open(Image, src, mode, error=_default_error, where="image", resize_pixels=0):
    """Open ``src`` with Pillow, check its size from the header, then decode it.

    Pillow's decompression-bomb check (Image.open refuses more than 2 × Image.MAX_IMAGE_PIXELS
    pixels) is reported as ``error`` too."""
    try:
        img = Image.open(src)
    except Image.DecompressionBombError as e:
        raise _TooLarge(error("%s is refused by Pillow as a possible decompression bomb: %s",
                              where, e)) from None
    _check_size(Image, img, lambda *a: _TooLarge(error(*a)), where, resize_pixels)
    if mode == "gray" and img.format == "JPEG" and img.mode != "L":
        img.draft("L", img.size)            # libjpeg's own luma output, as OpenCV reads it
    img.load()
    return img


def decode_image(data, mode="native", error=_default_error, where="encoded image"):
    """Decode PNG/JPEG/... bytes to a C×H×W uint8 array (BGR for colour)."""
    if mode not in _MODES:
        raise ValueError("mode must be one of %s" % sorted(_MODES))
    Image = _pil(error, "decoding %s" % where)
    try:
        img = _open(Image, io.BytesIO(data), mode, error, where)
    except _TooLarge as e:
        raise e.args[0] from None
    except Exception as e:
        raise error("%s: cannot decode the image: %s", where, e) from None
    return _to_bgr_array(img, mode, error, where)


def read_image(path, is_color=True, new_height=0, new_width=0, error=_default_error,
               where=None):
    """Caffe's ReadImageToCVMat: read ``path`` in colour (3 channels, BGR) or grey (1 channel),
    then resize to new_height × new_width with ``resize_bilinear`` when both are positive."""
    where = where or "image '%s'" % path
    Image = _pil(error, "reading %s" % where)
    mode = "color" if is_color else "gray"
    resize_pixels = new_height * new_width if new_height > 0 and new_width > 0 else 0
    if resize_pixels:
        channels = 3 if is_color else 1
        check_bytes(resize_pixels * channels * RESIZE_BYTES_PER_VALUE,
                    "%s resized to new_height x new_width = %d x %d (%d channel%s, %d bytes a "
                    "value while resizing)" % (where, new_height, new_width, channels,
                                               "s" if channels > 1 else "",
                                               RESIZE_BYTES_PER_VALUE),
                    lambda msg: error("%s", msg))
    try:
        img = _open(Image, path, mode, error, where, resize_pixels)
    except _TooLarge as e:
        raise e.args[0] from None
    except FileNotFoundError:
        raise error("could not load %s: no such file", where) from None
    except Exception as e:
        raise error("could not load %s: %s", where, e) from None
    arr = _to_bgr_array(img, mode, error, where)
    if new_height > 0 and new_width > 0:
        arr = resize_bilinear(arr, new_height, new_width)
    return arr


# -- OpenCV's INTER_LINEAR -------------------------------------------------------------

_COEF_BITS = 11
RESIZE_BYTES_PER_VALUE = 8      # resize_bilinear's int64 planes of the target size
_COEF_SCALE = 1 << _COEF_BITS


def _linear_taps(src_size, dst_size):
    """OpenCV's per-output-position source index and fixed-point weights along one axis."""
    scale = 1.0 / (float(dst_size) / float(src_size))
    d = np.arange(dst_size, dtype=np.float64)
    f = ((d + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    low = s < 0
    f[low] = 0
    s[low] = 0
    high = s >= src_size - 1
    f[high] = 0
    s[high] = src_size - 1
    a0 = np.rint((np.float32(1) - f) * np.float32(_COEF_SCALE)).astype(np.int64)
    a1 = np.rint(f * np.float32(_COEF_SCALE)).astype(np.int64)
    s1 = np.minimum(s + 1, src_size - 1)
    return s, s1, a0, a1


def resize_bilinear(img, height, width):
    """Resize a C×H×W uint8 image to C×height×width like OpenCV's INTER_LINEAR."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError("resize_bilinear takes uint8 images, got %s" % img.dtype)
    c, h, w = img.shape
    height, width = int(height), int(width)
    if height <= 0 or width <= 0:
        raise ValueError("cannot resize to %d x %d" % (height, width))
    if (h, w) == (height, width):
        return img.copy()
    if h == 2 * height and w == 2 * width:
        # OpenCV runs an exact 2x shrink as INTER_AREA: the rounded mean of each 2x2 block.
        x = img.astype(np.uint16)
        s = x[:, 0::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 0::2] + x[:, 1::2, 1::2]
        return ((s + 2) >> 2).astype(np.uint8)
    xs0, xs1, a0, a1 = _linear_taps(w, width)
    ys0, ys1, b0, b1 = _linear_taps(h, height)
    rows = np.unique(np.concatenate([ys0, ys1]))
    src = img[:, rows, :].astype(np.int64)                      # only the rows that are used
    horiz = src[:, :, xs0] * a0 + src[:, :, xs1] * a1           # C × R × width, scaled 2^11
    pos = np.searchsorted(rows, ys0), np.searchsorted(rows, ys1)
    s0 = horiz[:, pos[0], :]
    s1 = horiz[:, pos[1], :]
    bb0 = b0[None, :, None]
    bb1 = b1[None, :, None]
    # OpenCV's SIMD vertical pass: (((S0 >> 4)·b0 >> 16) + ((S1 >> 4)·b1 >> 16) + 2) >> 2
    out = ((((s0 >> 4) * bb0) >> 16) + (((s1 >> 4) * bb1) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)
