"""The vision layers under their earlier module name: Convolution, Deconvolution and Im2col live
in caffepy.layers.conv, Pooling and SPP in caffepy.layers.pooling, LRN in
caffepy.layers.normalization and Crop in caffepy.layers.common."""
from .common import CropLayer  # noqa: F401
from .conv import ConvolutionLayer, DeconvolutionLayer, Im2colLayer  # noqa: F401
from .normalization import LRNLayer  # noqa: F401
from .pooling import PoolingLayer, SPPLayer  # noqa: F401
