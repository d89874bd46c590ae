#!/usr/bin/env python
"""Draw a net's graph (a pycaffe-style script: runs unchanged on pycaffe or caffepy).

    python examples/pycaffe/draw_net.py NET.prototxt OUT.png [--rankdir TB]
        [--phase TRAIN|TEST|ALL] [--display_lrm]

The output format follows the extension; '.raw' writes the Graphviz dot source.
"""
import argparse
import sys

from google.protobuf import text_format

try:
    import caffe
except ImportError:                 # caffepy without its 'caffe' alias package
    import caffepy as caffe


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("input_net_proto_file", help="net prototxt to draw")
    parser.add_argument("output_image_file", help="image to write (format from extension)")
    parser.add_argument("--rankdir", default="LR",
                        help="Graphviz layout direction: LR, TB, BT or RL")
    parser.add_argument("--phase", default="ALL",
                        help="draw the layers of TRAIN, TEST, or ALL of them")
    parser.add_argument("--display_lrm", action="store_true",
                        help="show the learning-rate multipliers of Convolution, "
                             "Deconvolution and InnerProduct layers")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    net = caffe.proto.caffe_pb2.NetParameter()
    with open(args.input_net_proto_file) as f:
        text_format.Merge(f.read(), net)
    phases = {"TRAIN": caffe.TRAIN, "TEST": caffe.TEST, "ALL": None}
    if args.phase not in phases:
        raise ValueError("Unknown phase: %s (use TRAIN, TEST or ALL)" % args.phase)
    print("Drawing net to %s" % args.output_image_file)
    caffe.draw.draw_net_to_file(net, args.output_image_file, args.rankdir,
                                phases[args.phase], args.display_lrm)


if __name__ == "__main__":
    main(sys.argv[1:])
