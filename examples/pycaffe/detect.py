#!/usr/bin/env python
"""Windowed detection with a trained net (a pycaffe-style script: runs unchanged on pycaffe
or caffepy): classify given windows of images, R-CNN style.

    python examples/pycaffe/detect.py WINDOWS.csv OUTPUT.csv --model_def deploy.prototxt
        --pretrained_model weights.caffemodel [--mean_file mean.npy] [--context_pad 16] ...

WINDOWS.csv has a header naming the columns filename, ymin, xmin, ymax, xmax (any order), one
window a row. OUTPUT.csv gets filename, ymin, xmin, ymax, xmax and class0 ... class{C-1} (the
net's first output) a window; an OUTPUT.h5 (needs h5py) gets the datasets 'filename',
'window' and 'prediction'. A mean image (.npy, K x H x W) is reduced to its channel means.
Only --crop_mode list is available: selective search proposals are not part of caffepy.
"""
import argparse
import csv
import os
import sys
import time

import numpy as np

try:
    import caffe
except ImportError:                 # caffepy without its 'caffe' alias package
    import caffepy as caffe

CROP_MODES = ["list", "selective_search"]
COORD_COLS = ["ymin", "xmin", "ymax", "xmax"]
MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "models")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input_file", help="CSV of windows (filename, ymin, xmin, ymax, xmax)")
    parser.add_argument("output_file", help="output .csv (or .h5) of the predictions")
    parser.add_argument("--model_def", help="net definition (deploy prototxt)",
                        default=os.path.join(MODELS, "bvlc_reference_caffenet",
                                             "deploy.prototxt"))
    parser.add_argument("--pretrained_model", help="trained weights (.caffemodel)",
                        default=os.path.join(MODELS, "bvlc_reference_caffenet",
                                             "bvlc_reference_caffenet.caffemodel"))
    parser.add_argument("--crop_mode", default="list", choices=CROP_MODES,
                        help="how windows are found: listed in the input CSV")
    parser.add_argument("--gpu", action="store_true", help="compute on the GPU")
    parser.add_argument("--mean_file", default="",
                        help="mean image or channel means (.npy); empty for none")
    parser.add_argument("--input_scale", type=float,
                        help="multiply the mean-subtracted input by this")
    parser.add_argument("--raw_scale", type=float, default=255.0,
                        help="multiply the [0, 1] images by this before the mean")
    parser.add_argument("--channel_swap", default="2,1,0",
                        help="channel order to take (the default turns RGB into BGR)")
    parser.add_argument("--context_pad", type=int, default=16,
                        help="pixels of the net input taken by context around the window")
    return parser.parse_args(argv)


def read_windows(path):
    """[(filename, windows array n x 4 (ymin, xmin, ymax, xmax)), ...] in first-seen order."""
    by_file = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f, skipinitialspace=True):
            by_file.setdefault(row["filename"], []).append([int(float(row[c]))
                                                            for c in COORD_COLS])
    return [(fname, np.array(windows, dtype=int)) for fname, windows in by_file.items()]


def write_detections(path, detections):
    windows = np.array([d["window"] for d in detections])
    predictions = np.array([d["prediction"] for d in detections])
    if path.lower().endswith(".h5"):
        import h5py
        with h5py.File(path, "w") as f:
            f["filename"] = np.array([d["filename"] for d in detections], dtype="S")
            f["window"] = windows
            f["prediction"] = predictions
        return
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["filename"] + COORD_COLS
                     + ["class%d" % i for i in range(predictions.shape[1])])
        for d, window, prediction in zip(detections, windows, predictions):
            out.writerow([d["filename"]] + [int(v) for v in window]
                         + [repr(float(p)) for p in prediction])


def main(argv):
    args = parse_args(argv)
    mean, channel_swap = None, None
    if args.mean_file:
        mean = np.load(args.mean_file)
        if mean.shape[1:] != (1, 1):
            mean = mean.mean(1).mean(1)
    if args.channel_swap:
        channel_swap = [int(s) for s in args.channel_swap.split(",")]

    if args.gpu:
        caffe.set_mode_gpu()
        print("GPU mode")
    else:
        caffe.set_mode_cpu()
        print("CPU mode")

    detector = caffe.Detector(args.model_def, args.pretrained_model, mean=mean,
                              input_scale=args.input_scale, raw_scale=args.raw_scale,
                              channel_swap=channel_swap, context_pad=args.context_pad)

    t = time.time()
    print("Loading input...")
    if not args.input_file.lower().endswith("csv"):
        raise ValueError("Unknown input file type %s: give a .csv of windows" % args.input_file)
    images_windows = read_windows(args.input_file)
    if args.crop_mode == "list":
        detections = detector.detect_windows(images_windows)
    else:
        detections = detector.detect_selective_search([f for f, _ in images_windows])
    print("Processed {} windows in {:.3f} s.".format(len(detections), time.time() - t))

    t = time.time()
    write_detections(args.output_file, detections)
    print("Saved to {} in {:.3f} s.".format(args.output_file, time.time() - t))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except Exception as e:      # a caffepy error is one line, not a traceback
        if type(e).__module__.split(".")[0] not in ("caffe", "caffepy"):
            raise
        sys.exit("detect.py: error: %s" % e)
