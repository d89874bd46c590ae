"""The learnable blobs shared by InnerProduct, Embed, Convolution and Deconvolution: weights and
an optional bias, filled from the layer parameter's weight_filler and bias_filler."""


def weight_and_bias(layer, param, weight_shape, bias_term, bias_size):
    """Give ``layer`` the blobs [weights, bias] (bias only with ``bias_term``), filled from
    ``param.weight_filler`` / ``param.bias_filler``; blobs the layer already has (preloaded from
    the prototxt or a caffemodel) are checked for their number and shapes instead."""
    if len(layer.blobs) == 0:
        w = layer.blobs.add_blob(*weight_shape)
        layer.fill_param(param.weight_filler, w, "weight_filler")
        if bias_term:
            b = layer.blobs.add_blob(bias_size)
            layer.fill_param(param.bias_filler, b, "bias_filler")
        return
    nblobs = 2 if bias_term else 1
    if len(layer.blobs) != nblobs:
        raise layer.error("Incorrect number of weight blobs: expected %d (weights%s), got %d "
                          "(preloaded from the prototxt or a caffemodel)", nblobs,
                          " and bias" if bias_term else "", len(layer.blobs))
    layer.check_param_shape(0, weight_shape, "weight")
    if bias_term:
        layer.check_param_shape(1, (bias_size,), "bias")
