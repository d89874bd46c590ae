"""Shape helpers shared by the layer modules: products of dimensions, shapes in messages, and
the 4-D (num, channels, height, width) check of the image layers."""


def prod(dims):
    """The product of ``dims`` as a Python int (1 for no dims)."""
    c = 1
    for d in dims:
        c *= int(d)
    return c


def shape_str(shape):
    """A shape as messages print it: ``(2, 3, 4)``."""
    return "(" + ", ".join(str(d) for d in shape) + ")"


def nchw(layer, blob):
    """The (N, C, H, W) of a 4-D bottom; any other number of axes is the layer's error."""
    if blob.num_axes != 4:
        raise layer.error("Input must have 4 axes, corresponding to (num, channels, height, "
                          "width); bottom has shape %s", shape_str(blob.shape))
    return tuple(int(d) for d in blob.shape)
