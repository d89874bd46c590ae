"""R-CNN window files and the WindowData sampler (Caffe's window_data_layer.cpp).

A window file repeats, for each image::

    # image_index
    img_path
    channels
    height
    width
    num_windows
    class_index overlap x1 y1 x2 y2      (num_windows lines)

Windows with ``overlap >= fg_threshold`` are foreground (their class must be > 0); windows with
``overlap < bg_threshold`` are background (label and overlap forced to 0); the others are dropped.

Each batch takes ``batch_size - int(batch_size·fg_fraction)`` background windows, then the
foreground ones, each drawn uniformly with replacement (``rand % count``), with a mirror coin
per window when mirroring. A window is cut out of its image (read in colour, BGR), optionally
enlarged by ``context_pad`` (and made square with crop_mode "square"), clipped to the image, and
warped with OpenCV's bilinear resize so that it fills crop_size × crop_size, with the part that
fell outside the image left as zero padding. Each copied pixel becomes
``(pixel − mean) · window_data_param.scale``, where the mean_file is indexed at the centred crop
offset ``(mean_width − crop_size) / 2`` plus the padding; the padding stays 0.
"""
import math

import numpy as np

from .db import DataError
from .image import read_image, decode_image, resize_bilinear
from .sources import read_text

# window columns (Caffe's WindowField order)
IMAGE_INDEX, LABEL, OVERLAP, X1, Y1, X2, Y2 = range(7)


def _default_error(msg, *args):
    return DataError(msg % args if args else msg)


def parse_window_file(path, root_folder="", fg_threshold=0.5, bg_threshold=0.5,
                      error=_default_error):
    """Returns (images, fg, bg): images is a list of (path, (channels, height, width)), fg and
    bg are float32 arrays of windows (K × 7, columns IMAGE_INDEX, LABEL, OVERLAP, X1..Y2)."""
    text = read_text(path, "window file", error)
    tokens = []
    for lineno, line in enumerate(text.splitlines(), 1):
        tokens.extend((tok, lineno) for tok in line.split())
    if not tokens:
        raise error("window file '%s' is empty", path)
    pos = 0

    def take(kind, what):
        nonlocal pos
        if pos >= len(tokens):
            raise error("window file '%s' ends early: expected %s after line %d", path, what,
                        tokens[-1][1])
        tok, lineno = tokens[pos]
        pos += 1
        if kind is str:
            return tok
        try:
            return kind(tok)
        except ValueError:
            raise error("window file '%s', line %d: expected %s, got '%s'", path, lineno,
                        what, tok) from None

    images, fg, bg = [], [], []
    fg_t, bg_t = np.float32(fg_threshold), np.float32(bg_threshold)
    while pos < len(tokens):
        tok, lineno = tokens[pos]
        if tok != "#":
            raise error("window file '%s', line %d: expected '# image_index', got '%s'",
                        path, lineno, tok)
        pos += 1
        image_index = take(int, "an image index after '#'")
        image_path = root_folder + take(str, "an image path")
        size = (take(int, "the image channels"), take(int, "the image height"),
                take(int, "the image width"))
        images.append((image_path, size))
        num_windows = take(int, "the number of windows")
        for _ in range(num_windows):
            label = take(int, "a window's class index")
            overlap = np.float32(take(float, "a window's overlap"))
            box = [take(int, "a window coordinate (x1 y1 x2 y2)") for _ in range(4)]
            if overlap >= fg_t:
                if label <= 0:
                    raise error("window file '%s', line %d: a foreground window (overlap %g >= "
                                "fg_threshold %g) must have a class index > 0, got %d", path,
                                tokens[pos - 1][1], overlap, fg_t, label)
                fg.append([image_index, label, overlap] + box)
            elif overlap < bg_t:
                bg.append([image_index, 0, 0] + box)
    for windows in (fg, bg):
        for w in windows:
            if not 0 <= w[IMAGE_INDEX] < len(images):
                raise error("window file '%s': image index %d is out of range (the file lists "
                            "%d images, indexed from 0)", path, w[IMAGE_INDEX], len(images))
    as_arr = lambda ws: np.asarray(ws, dtype=np.float32).reshape(-1, 7)  # noqa: E731
    return images, as_arr(fg), as_arr(bg)


def _round(x):
    """C's round(): halves away from zero."""
    x = float(x)
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def window_geometry(box, img_h, img_w, crop_size, context_pad, square, mirror):
    """Caffe's window arithmetic (float32 like Caffe's Dtype). Returns the clipped source box
    (x1, y1, x2, y2), the warped size (height, width) and the padding (pad_h, pad_w)."""
    f = np.float32
    x1, y1, x2, y2 = (int(v) for v in box)
    crop_h = crop_w = crop_size
    pad_h = pad_w = 0
    if context_pad > 0 or square:
        context_scale = f(crop_size) / f(crop_size - 2 * context_pad)
        half_height = f(f(y2 - y1 + 1) / 2.0)
        half_width = f(f(x2 - x1 + 1) / 2.0)
        center_x = f(x1) + half_width
        center_y = f(y1) + half_height
        if square:
            if half_height > half_width:
                half_width = half_height
            else:
                half_height = half_width
        x1 = _round(center_x - half_width * context_scale)
        x2 = _round(center_x + half_width * context_scale)
        y1 = _round(center_y - half_height * context_scale)
        y2 = _round(center_y + half_height * context_scale)
        unclipped_height = y2 - y1 + 1
        unclipped_width = x2 - x1 + 1
        pad_x1 = max(0, -x1)
        pad_y1 = max(0, -y1)
        pad_x2 = max(0, x2 - img_w + 1)
        pad_y2 = max(0, y2 - img_h + 1)
        x1 += pad_x1
        x2 -= pad_x2
        y1 += pad_y1
        y2 -= pad_y2
        clipped_height = y2 - y1 + 1
        clipped_width = x2 - x1 + 1
        scale_x = f(crop_size) / f(unclipped_width)
        scale_y = f(crop_size) / f(unclipped_height)
        crop_w = _round(f(clipped_width) * scale_x)
        crop_h = _round(f(clipped_height) * scale_y)
        pad_x1 = _round(f(pad_x1) * scale_x)
        pad_x2 = _round(f(pad_x2) * scale_x)
        pad_y1 = _round(f(pad_y1) * scale_y)
        pad_h = pad_y1
        pad_w = pad_x2 if mirror else pad_x1          # the padding is mirrored too
        if pad_h + crop_h > crop_size:
            crop_h = crop_size - pad_h
        if pad_w + crop_w > crop_size:
            crop_w = crop_size - pad_w
    return (x1, y1, x2, y2), (crop_h, crop_w), (pad_h, pad_w)


class WindowSampler:
    """Fills batches for the WindowData layer (used by the prefetch thread)."""

    def __init__(self, images, fg, bg, batch_size, crop_size, channels, fg_fraction,
                 context_pad, crop_mode, mirror, scale, mean=None, mean_values=None,
                 cache_images=False, rng=None, error=_default_error):
        self.images = images
        self.fg, self.bg = fg, bg
        self.batch_size = int(batch_size)
        self.crop_size = int(crop_size)
        self.channels = int(channels)
        self.num_fg = int(np.float32(self.batch_size) * np.float32(fg_fraction))
        self.context_pad = int(context_pad)
        self.square = crop_mode == "square"
        self.mirror = bool(mirror)
        self.scale = np.float32(scale)
        self.mean = mean
        self.mean_values = mean_values
        self.rng = rng if rng is not None else np.random.default_rng()
        self._error = error
        self._cache = None
        if cache_images:
            self._cache = {}
            for path, _ in images:
                try:
                    with open(path, "rb") as f:
                        self._cache[path] = f.read()
                except OSError as e:
                    raise error("could not open or find file '%s' (listed in the window file): "
                                "%s", path, e.strerror or e) from None

    def _image(self, index):
        path = self.images[index][0]
        if self._cache is not None:
            return decode_image(self._cache[path], "color", self._error, "image '%s'" % path)
        return read_image(path, True, error=self._error, where="image '%s'" % path)

    def _rand(self):
        return int(self.rng.integers(1 << 32))          # Caffe's PrefetchRand()

    def load(self, batch):
        n, c, crop = self.batch_size, self.channels, self.crop_size
        if batch.data is None or batch.data.shape != (n, c, crop, crop):
            batch.data = np.empty((n, c, crop, crop), np.float32)
        if batch.label is None or batch.label.shape != (n,):
            batch.label = np.empty((n,), np.float32)
        out = batch.data
        out[...] = 0
        item = 0
        for is_fg, count in ((0, n - self.num_fg), (1, self.num_fg)):
            windows = self.fg if is_fg else self.bg
            for _ in range(count):
                window = windows[self._rand() % len(windows)]
                do_mirror = self.mirror and self._rand() % 2 == 1
                self._fill(out[item], window, do_mirror)
                batch.label[item] = window[LABEL]
                item += 1

    def _fill(self, dst, window, do_mirror):
        idx = int(window[IMAGE_INDEX])
        img = self._image(idx)
        if img.shape[0] != self.channels:
            raise self._error("image '%s' has %d channels, the layer outputs %d",
                              self.images[idx][0], img.shape[0], self.channels)
        _, ih, iw = img.shape
        box = window[X1:Y2 + 1]
        (x1, y1, x2, y2), (ch, cw), (pad_h, pad_w) = window_geometry(
            box, ih, iw, self.crop_size, self.context_pad, self.square, do_mirror)
        if not (0 <= x1 <= x2 < iw and 0 <= y1 <= y2 < ih):
            raise self._error("window (x1 %d, y1 %d, x2 %d, y2 %d) does not lie inside image '%s' "
                              "(%d x %d)", *[int(v) for v in box], self.images[idx][0], iw, ih)
        if ch <= 0 or cw <= 0:
            raise self._error("window (x1 %d, y1 %d, x2 %d, y2 %d) of image '%s' warps to an "
                              "empty %d x %d region", *[int(v) for v in box],
                              self.images[idx][0], ch, cw)
        warped = resize_bilinear(img[:, y1:y2 + 1, x1:x2 + 1], ch, cw)
        if do_mirror:
            warped = warped[:, :, ::-1]
        region = dst[:, pad_h:pad_h + ch, pad_w:pad_w + cw]
        region[...] = warped
        if self.mean is not None:
            mh, mw = self.mean.shape[1:]
            off = (mw - self.crop_size) // 2
            region -= self.mean[:, off + pad_h:off + pad_h + ch, off + pad_w:off + pad_w + cw]
        elif self.mean_values is not None:
            region -= self.mean_values[:, None, None]
        if self.scale != 1:
            region *= self.scale

    def close(self):
        self._cache = None
