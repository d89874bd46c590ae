"""pycaffe's ``caffe.Detector``: windowed detection with a TEST-phase Net, R-CNN style.

``Detector(model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
channel_swap=None, context_pad=None)`` builds ``Net(model_file, TEST, weights=pretrained_file)``
and a :class:`caffepy.io.Transformer` for the first net input (H×W×K -> K×H×W, then the optional
channel swap, raw scale, mean and input scale), as :class:`caffepy.Classifier` does.

``detect_windows([(image filename, windows), ...])`` loads each image with
:func:`caffepy.io.load_image`, crops every window (``ymin, xmin, ymax, xmax``), warps the crops
to the input blob's size, runs ``forward_all`` and returns one
``{'window', 'prediction', 'filename'}`` dict per window, in order.

With ``context_pad`` p, a crop takes surrounding context so that a p-pixel border of the warped
input is context: the window, grown about its centre by ``size / (size - 2p)`` (``size`` the
input blob's width), is clipped to the image, resized into its place of a ``size × size`` crop,
and the part of the grown box outside the image is filled with the mean in raw input space
(the Transformer mean, channel swap undone, divided by raw_scale). The arithmetic (inclusive
box sizes, round half to even) is pycaffe's.

Selective search window proposals (``detect_selective_search``) need an external MATLAB package
and are not part of caffepy: that method raises :class:`DetectorError`; compute the windows
elsewhere and pass them to ``detect_windows``.
"""
import numpy as np

from . import io as caffe_io
from .classifier import input_transformer
from .errors import CaffepyError
from .net import Net
from .proto import caffe_pb2

__all__ = ["Detector", "DetectorError"]


class DetectorError(CaffepyError, ValueError):
    """A Detector call that cannot be carried out (no windows, a window outside its image,
    selective search requested)."""


class Detector(Net):
    """Detector extends Net for windowed detection by a list of crops.

    Parameters
    ----------
    mean, input_scale, raw_scale, channel_swap : the Transformer settings of the net input;
        see :class:`caffepy.io.Transformer`.
    context_pad : amount of surrounding context to take s.t. a ``context_pad`` sized border
        of pixels in the network input image is context, as in R-CNN feature extraction.
    """

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None, context_pad=None):
        Net.__init__(self, model_file, caffe_pb2.TEST, weights=pretrained_file)
        self.transformer = input_transformer(self, model_file, "Detector", "windows",
                                             DetectorError, mean, input_scale, raw_scale,
                                             channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        """Do windowed detection over given images and windows. Windows are extracted then
        warped to the input dimensions of the net.

        Parameters
        ----------
        images_windows : iterable of (image filename, window list) pairs; a window is
            (ymin, xmin, ymax, xmax) in pixels.

        Returns
        -------
        detections : list of {'window': the window, 'prediction': the first net output for
            it, 'filename': image filename} dicts, in input order.
        """
        images_windows = [(fname, list(windows)) for fname, windows in images_windows]

        # Extract windows.
        window_inputs = []
        for image_fname, windows in images_windows:
            image = caffe_io.load_image(image_fname).astype(np.float32)
            for window in windows:
                window_inputs.append(self.crop(image, window))
        if not window_inputs:
            raise DetectorError("Detector.detect_windows: no windows given (%d images)"
                                % len(images_windows))

        # Run through the net (warping windows to input dimensions).
        in_ = self.inputs[0]
        caffe_in = np.zeros((len(window_inputs), window_inputs[0].shape[2])
                            + tuple(self.blobs[in_].data.shape[2:]), dtype=np.float32)
        for ix, window_in in enumerate(window_inputs):
            caffe_in[ix] = self.transformer.preprocess(in_, window_in)
        out = self.forward_all(**{in_: caffe_in})
        predictions = out[self.outputs[0]]

        # Package predictions with images and windows.
        detections = []
        ix = 0
        for image_fname, windows in images_windows:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[ix],
                                   "filename": image_fname})
                ix += 1
        return detections

    def detect_selective_search(self, image_fnames):
        """Selective search proposals are not part of caffepy: always raises DetectorError."""
        raise DetectorError(
            "Detector.detect_selective_search: selective search window proposals (the "
            "selective_search_ijcv_with_python MATLAB package) are not part of caffepy; compute "
            "windows with another tool and call detect_windows([(filename, windows), ...]) "
            "(detect.py: --crop_mode list with a CSV of windows)")

    def crop(self, im, window):
        """Crop a window from the image for detection, with surrounding context according to
        the ``context_pad`` configuration.

        Parameters
        ----------
        im : H x W x K image ndarray to crop.
        window : bounding box coordinates as ymin, xmin, ymax, xmax.

        Returns
        -------
        crop : the window (ymax and xmax exclusive) without context; with context, a
            size × size × K crop.
        """
        window = np.asarray(window)
        if window.shape != (4,):
            raise DetectorError("Detector.crop: a window is (ymin, xmin, ymax, xmax), got %r"
                                % (window.tolist(),))
        if not self.context_pad:
            return im[int(window[0]):int(window[2]), int(window[1]):int(window[3])]

        box = window.astype(np.float64)
        crop_size = self.blobs[self.inputs[0]].width      # assumes a square input
        scale = crop_size / (1.0 * crop_size - self.context_pad * 2)
        # The box grown about its centre by `scale` (sizes counted inclusively).
        half_h = (box[2] - box[0] + 1) / 2.0
        half_w = (box[3] - box[1] + 1) / 2.0
        center = (box[0] + half_h, box[1] + half_w)
        scaled_dims = scale * np.array((-half_h, -half_w, half_h, half_w))
        box = np.round(np.tile(center, 2) + scaled_dims)
        full_h = box[2] - box[0] + 1
        full_w = box[3] - box[1] + 1
        scale_h = crop_size / full_h
        scale_w = crop_size / full_w
        pad_y = int(np.round(max(0.0, -box[0]) * scale_h))   # the part above / left of the
        pad_x = int(np.round(max(0.0, -box[1]) * scale_w))   # image, in crop pixels

        # Clip the box to the image.
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w])
        clip_h = box[2] - box[0] + 1
        clip_w = box[3] - box[1] + 1
        y0, x0, y1, x1 = (int(v) for v in box)
        if clip_h <= 0 or clip_w <= 0 or y1 <= y0 or x1 <= x0:
            raise DetectorError("Detector.crop: window %r (with context %r) lies outside the "
                                "%d x %d image" % (window.tolist(), box.tolist(), im_h, im_w))
        crop_h = int(np.round(clip_h * scale_h))
        crop_w = int(np.round(clip_w * scale_w))
        if pad_y + crop_h > crop_size:
            crop_h = crop_size - pad_y
        if pad_x + crop_w > crop_size:
            crop_w = crop_size - pad_x

        # The clipped context box, resized into its place of a mean-filled crop.
        context_crop = caffe_io.resize_image(im[y0:y1, x0:x1], (crop_h, crop_w))
        crop = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        crop[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context_crop
        return crop

    def configure_crop(self, context_pad):
        """Configure crop dimensions and amount of context for cropping. With context, make
        the mean in raw input space that fills context outside the image.

        Parameters
        ----------
        context_pad : amount of context for cropping.
        """
        in_ = self.inputs[0]
        inv_transpose = np.argsort(self.transformer.transpose[in_])
        # the input blob's (C, H, W) in image order: (H, W, C)
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inv_transpose]
        self.context_pad = context_pad
        if self.context_pad:
            channel_order = self.transformer.channel_swap.get(in_)
            raw_scale = self.transformer.raw_scale.get(in_)
            mean = self.transformer.mean.get(in_)
            if mean is not None:
                crop_mean = np.array(mean, dtype=np.float64).transpose(inv_transpose)
                if channel_order is not None and crop_mean.shape[2] == len(channel_order):
                    crop_mean = crop_mean[:, :, np.argsort(channel_order)]
                if raw_scale is not None:
                    crop_mean /= raw_scale
                self.crop_mean = crop_mean
            else:
                self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
