"""pycaffe's ``caffe.Classifier``: a TEST-phase Net wrapped with image pre-processing.

``Classifier(model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
raw_scale=None, channel_swap=None)`` builds ``Net(model_file, TEST, weights=pretrained_file)``
and a :class:`caffepy.io.Transformer` for the first net input (transpose H×W×K -> K×H×W, then
the optional channel swap, raw scale, mean and input scale). ``predict(inputs, oversample=True)``
resizes each H×W×K image to ``image_dims``, takes the ten oversampled crops (four corners,
centre, and their mirrors) or only the centre crop of the input blob's size, pre-processes them,
runs ``forward_all`` and returns the first output, averaged over the ten crops of each image.
The numbers are those of pycaffe's python/caffe/classifier.py.
"""
import numpy as np

from . import io as caffe_io
from .net import Net
from .proto import caffe_pb2

__all__ = ["Classifier"]


def input_transformer(net, model_file, who, what, error, mean, input_scale, raw_scale,
                      channel_swap):
    """pycaffe's pre-processing of a net's first input: a Transformer taking H×W×K images to
    K×H×W, then the channel swap, raw scale, mean and input scale given (None: not set).
    ``error`` is raised, naming ``who`` and ``model_file``, when the net has no input."""
    if not net.inputs:
        raise error("%s: the net '%s' has no input blob (it needs an Input layer or input: "
                    "fields to feed %s into)" % (who, model_file, what))
    in_ = net.inputs[0]
    transformer = caffe_io.Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer


class Classifier(Net):
    """Classifier extends Net for image class prediction by scaling, center cropping, or
    oversampling.

    Parameters
    ----------
    image_dims : dimensions to scale input images to for cropping (default: the input blob's
        height and width, so no scaling).
    mean, input_scale, raw_scale, channel_swap : the Transformer settings of the net input;
        see :class:`caffepy.io.Transformer`.
    """

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None,
                 input_scale=None, raw_scale=None, channel_swap=None):
        Net.__init__(self, model_file, caffe_pb2.TEST, weights=pretrained_file)
        self.transformer = input_transformer(self, model_file, "Classifier", "images",
                                             ValueError, mean, input_scale, raw_scale,
                                             channel_swap)
        in_ = self.inputs[0]
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        if image_dims is None or len(image_dims) == 0:
            image_dims = self.crop_dims
        self.image_dims = image_dims

    def predict(self, inputs, oversample=True):
        """Predict classification probabilities of inputs.

        Parameters
        ----------
        inputs : iterable of (H x W x K) input ndarrays.
        oversample : boolean
            average predictions across center, corners, and mirrors when True (default);
            center-only prediction when False.

        Returns
        -------
        predictions: (N x C) ndarray of class probabilities for N images and C classes.
        """
        inputs = list(inputs)
        if not inputs:
            raise ValueError("Classifier.predict: no input images")
        # Scale to standardize input dimensions.
        input_ = np.zeros((len(inputs), self.image_dims[0], self.image_dims[1],
                           inputs[0].shape[2]), dtype=np.float32)
        for ix, in_ in enumerate(inputs):
            input_[ix] = caffe_io.resize_image(in_, self.image_dims)

        if oversample:
            # Generate center, corner, and mirrored crops.
            input_ = caffe_io.oversample(input_, self.crop_dims)
        else:
            # Take center crop.
            center = np.array(self.image_dims) / 2.0
            crop = np.tile(center, (1, 2))[0] + np.concatenate([-self.crop_dims / 2.0,
                                                               self.crop_dims / 2.0])
            crop = crop.astype(int)
            input_ = input_[:, crop[0]:crop[2], crop[1]:crop[3], :]

        # Classify
        caffe_in = np.zeros(np.array(input_.shape)[[0, 3, 1, 2]], dtype=np.float32)
        for ix, in_ in enumerate(input_):
            caffe_in[ix] = self.transformer.preprocess(self.inputs[0], in_)
        out = self.forward_all(**{self.inputs[0]: caffe_in})
        predictions = out[self.outputs[0]]

        # For oversampling, average predictions across crops.
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1))
            predictions = predictions.mean(1)

        return predictions
