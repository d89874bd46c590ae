#!/usr/bin/env python
"""Classify images with a trained net (a pycaffe-style script: runs unchanged on pycaffe or
caffepy) and save the class probabilities as an N x C .npy array.

    python examples/pycaffe/classify.py INPUT OUTPUT.npy --model_def deploy.prototxt
        --pretrained_model weights.caffemodel [--mean_file mean.npy] [--center_only] ...

INPUT is an .npy array of H x W x K images, a folder of images (--ext) or one image file.
Images are scaled to --images_dim, cut into ten oversampled crops (or the centre crop) of the
net's input size, transposed to K x H x W, channel-swapped, scaled by --raw_scale, the mean
(a K x H x W image of any size, resized to the input, or K channel means) subtracted and scaled
by --input_scale.
"""
import argparse
import glob
import os
import sys
import time

import numpy as np

try:
    import caffe
except ImportError:                 # caffepy without its 'caffe' alias package
    import caffepy as caffe

MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "models")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input_file", help="input image, folder of images, or .npy array")
    parser.add_argument("output_file", help="output .npy file of class probabilities")
    parser.add_argument("--model_def", help="net definition (deploy prototxt)",
                        default=os.path.join(MODELS, "bvlc_reference_caffenet",
                                             "deploy.prototxt"))
    parser.add_argument("--pretrained_model", help="trained weights (.caffemodel)",
                        default=os.path.join(MODELS, "bvlc_reference_caffenet",
                                             "bvlc_reference_caffenet.caffemodel"))
    parser.add_argument("--gpu", action="store_true", help="compute on the GPU")
    parser.add_argument("--center_only", action="store_true",
                        help="predict from the centre crop alone instead of averaging over "
                             "the ten oversampled crops")
    parser.add_argument("--images_dim", default="256,256",
                        help="'height,width' the images are scaled to before cropping")
    parser.add_argument("--mean_file", default="",
                        help="mean image (.npy, K x H x W of any size) or channel means (.npy, "
                             "K); empty for no mean subtraction")
    parser.add_argument("--input_scale", type=float,
                        help="multiply the mean-subtracted input by this")
    parser.add_argument("--raw_scale", type=float, default=255.0,
                        help="multiply the [0, 1] images by this before the mean")
    parser.add_argument("--channel_swap", default="2,1,0",
                        help="channel order to take (the default turns RGB into BGR)")
    parser.add_argument("--ext", default="jpg", help="image extension for a folder input")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    image_dims = [int(s) for s in args.images_dim.split(",")]
    mean = np.load(args.mean_file) if args.mean_file else None
    channel_swap = ([int(s) for s in args.channel_swap.split(",")]
                    if args.channel_swap else None)

    if args.gpu:
        caffe.set_mode_gpu()
        print("GPU mode")
    else:
        caffe.set_mode_cpu()
        print("CPU mode")

    classifier = caffe.Classifier(args.model_def, args.pretrained_model,
                                  image_dims=image_dims, mean=mean,
                                  input_scale=args.input_scale, raw_scale=args.raw_scale,
                                  channel_swap=channel_swap)

    input_file = os.path.expanduser(args.input_file)
    if input_file.endswith("npy"):
        print("Loading file: %s" % input_file)
        inputs = np.load(input_file)
    elif os.path.isdir(input_file):
        print("Loading folder: %s" % input_file)
        inputs = [caffe.io.load_image(f)
                  for f in sorted(glob.glob(os.path.join(input_file, "*." + args.ext)))]
    else:
        print("Loading file: %s" % input_file)
        inputs = [caffe.io.load_image(input_file)]

    print("Classifying %d inputs." % len(inputs))
    start = time.time()
    predictions = classifier.predict(inputs, not args.center_only)
    print("Done in %.2f s." % (time.time() - start))

    print("Saving results into %s" % args.output_file)
    np.save(args.output_file, predictions)


if __name__ == "__main__":
    main(sys.argv[1:])
