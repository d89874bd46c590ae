#!/usr/bin/env python
"""Write models/bvlc_googlenet/{train_val,deploy}.prototxt (BVLC GoogLeNet, Caffe 1.0 layout).

The text is deterministic, so the generated files can be committed and checked:

    python tools/gen_googlenet.py            # (re)write the two files
    python tools/gen_googlenet.py --check    # exit 1 if the committed files differ
    python tools/gen_googlenet.py --out DIR  # write somewhere else

Layer and blob names, fillers and learning-rate multipliers follow the shipped model:
conv1/7x7_s2 -> pool1/3x3_s2 -> pool1/norm1 -> conv2/3x3_reduce -> conv2/3x3 -> conv2/norm2 ->
pool2/3x3_s2 -> inception 3a, 3b -> pool3/3x3_s2 -> 4a -> [loss1 head] -> 4b, 4c, 4d ->
[loss2 head] -> 4e -> pool4/3x3_s2 -> 5a, 5b -> pool5/7x7_s1 -> dropout 0.4 -> loss3/classifier.
"""
import argparse
import os
import sys

# (1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj) per inception block.
INCEPTION = [
    ("3a", (64, 96, 128, 16, 32, 32)),
    ("3b", (128, 128, 192, 32, 96, 64)),
    ("4a", (192, 96, 208, 16, 48, 64)),
    ("4b", (160, 112, 224, 24, 64, 64)),
    ("4c", (128, 128, 256, 24, 64, 64)),
    ("4d", (112, 144, 288, 32, 64, 64)),
    ("4e", (256, 160, 320, 32, 128, 128)),
    ("5a", (256, 160, 320, 32, 128, 128)),
    ("5b", (384, 192, 384, 48, 128, 128)),
]

MEAN_VALUES = (104, 117, 123)


def _indent(text, n):
    pad = " " * n
    return "".join(pad + line if line.strip() else line for line in text.splitlines(True))


def _layer(name, type_, bottoms=(), tops=(), body=""):
    s = 'layer {\n  name: "%s"\n  type: "%s"\n' % (name, type_)
    for b in bottoms:
        s += '  bottom: "%s"\n' % b
    for t in tops:
        s += '  top: "%s"\n' % t
    return s + _indent(body, 2) + "}\n"


_PARAMS = ("param {\n  lr_mult: 1\n  decay_mult: 1\n}\n"
           "param {\n  lr_mult: 2\n  decay_mult: 0\n}\n")


def _fillers(bias):
    return ('weight_filler {\n  type: "xavier"\n}\n'
            'bias_filler {\n  type: "constant"\n  value: %s\n}\n' % bias)


def _conv(name, bottom, num_output, kernel, pad=0, stride=1, bias=0.2):
    p = "num_output: %d\n" % num_output
    if pad:
        p += "pad: %d\n" % pad
    p += "kernel_size: %d\n" % kernel
    if stride != 1:
        p += "stride: %d\n" % stride
    p += _fillers(bias)
    return _layer(name, "Convolution", (bottom,), (name,),
                  _PARAMS + "convolution_param {\n" + _indent(p, 2) + "}\n")


def _ip(name, bottom, num_output, bias):
    p = "num_output: %d\n" % num_output + _fillers(bias)
    return _layer(name, "InnerProduct", (bottom,), (name,),
                  _PARAMS + "inner_product_param {\n" + _indent(p, 2) + "}\n")


def _relu(name, blob):
    return _layer(name, "ReLU", (blob,), (blob,))


def _pool(name, bottom, pool, kernel, stride, pad=0):
    p = "pool: %s\nkernel_size: %d\nstride: %d\n" % (pool, kernel, stride)
    if pad:
        p += "pad: %d\n" % pad
    return _layer(name, "Pooling", (bottom,), (name,), "pooling_param {\n" + _indent(p, 2) + "}\n")


def _lrn(name, bottom):
    return _layer(name, "LRN", (bottom,), (name,),
                  "lrn_param {\n  local_size: 5\n  alpha: 0.0001\n  beta: 0.75\n}\n")


def _dropout(name, blob, ratio):
    return _layer(name, "Dropout", (blob,), (blob,),
                  "dropout_param {\n  dropout_ratio: %s\n}\n" % ratio)


def _data(phase, source, batch, mirror):
    tp = "mirror: %s\ncrop_size: 224\n" % ("true" if mirror else "false")
    tp += "".join("mean_value: %d\n" % v for v in MEAN_VALUES)
    body = ("include {\n  phase: %s\n}\n" % phase
            + "transform_param {\n" + _indent(tp, 2) + "}\n"
            + 'data_param {\n  source: "%s"\n  batch_size: %d\n  backend: LMDB\n}\n' % (source, batch))
    return _layer("data", "Data", (), ("data", "label"), body)


def _inception(block, bottom, sizes):
    n1, n3r, n3, n5r, n5, proj = sizes
    p = "inception_%s/" % block
    s = _conv(p + "1x1", bottom, n1, 1) + _relu(p + "relu_1x1", p + "1x1")
    s += _conv(p + "3x3_reduce", bottom, n3r, 1) + _relu(p + "relu_3x3_reduce", p + "3x3_reduce")
    s += _conv(p + "3x3", p + "3x3_reduce", n3, 3, pad=1) + _relu(p + "relu_3x3", p + "3x3")
    s += _conv(p + "5x5_reduce", bottom, n5r, 1) + _relu(p + "relu_5x5_reduce", p + "5x5_reduce")
    s += _conv(p + "5x5", p + "5x5_reduce", n5, 5, pad=2) + _relu(p + "relu_5x5", p + "5x5")
    s += _pool(p + "pool", bottom, "MAX", 3, 1, pad=1)
    s += _conv(p + "pool_proj", p + "pool", proj, 1) + _relu(p + "relu_pool_proj", p + "pool_proj")
    s += _layer(p + "output", "Concat", (p + "1x1", p + "3x3", p + "5x5", p + "pool_proj"),
                (p + "output",))
    return s, p + "output"


def _losses(prefix, classifier, loss_top, weight):
    s = _layer(prefix + "/loss", "SoftmaxWithLoss", (classifier, "label"), (loss_top,),
               "loss_weight: %s\n" % weight)
    s += _layer(prefix + "/top-1", "Accuracy", (classifier, "label"), (prefix + "/top-1",),
                "include {\n  phase: TEST\n}\n")
    s += _layer(prefix + "/top-5", "Accuracy", (classifier, "label"), (prefix + "/top-5",),
                "include {\n  phase: TEST\n}\naccuracy_param {\n  top_k: 5\n}\n")
    return s


def _aux_head(prefix, bottom, loss_top):
    s = _pool(prefix + "/ave_pool", bottom, "AVE", 5, 3)
    s += _conv(prefix + "/conv", prefix + "/ave_pool", 128, 1)
    s += _relu(prefix + "/relu_conv", prefix + "/conv")
    s += _ip(prefix + "/fc", prefix + "/conv", 1024, 0.2) + _relu(prefix + "/relu_fc", prefix + "/fc")
    s += _dropout(prefix + "/drop_fc", prefix + "/fc", 0.7)
    s += _ip(prefix + "/classifier", prefix + "/fc", 1000, 0)
    return s + _losses(prefix, prefix + "/classifier", loss_top, 0.3)


def googlenet(deploy=False):
    s = 'name: "GoogleNet"\n'
    if deploy:
        s += _layer("data", "Input", (), ("data",),
                    "input_param { shape: { dim: 10 dim: 3 dim: 224 dim: 224 } }\n")
    else:
        s += _data("TRAIN", "examples/imagenet/ilsvrc12_train_lmdb", 32, True)
        s += _data("TEST", "examples/imagenet/ilsvrc12_val_lmdb", 50, False)
    s += _conv("conv1/7x7_s2", "data", 64, 7, pad=3, stride=2) + _relu("conv1/relu_7x7", "conv1/7x7_s2")
    s += _pool("pool1/3x3_s2", "conv1/7x7_s2", "MAX", 3, 2)
    s += _lrn("pool1/norm1", "pool1/3x3_s2")
    s += _conv("conv2/3x3_reduce", "pool1/norm1", 64, 1)
    s += _relu("conv2/relu_3x3_reduce", "conv2/3x3_reduce")
    s += _conv("conv2/3x3", "conv2/3x3_reduce", 192, 3, pad=1) + _relu("conv2/relu_3x3", "conv2/3x3")
    s += _lrn("conv2/norm2", "conv2/3x3")
    s += _pool("pool2/3x3_s2", "conv2/norm2", "MAX", 3, 2)
    blob = "pool2/3x3_s2"
    for block, sizes in INCEPTION:
        text, blob = _inception(block, blob, sizes)
        s += text
        if block == "3b":
            s += _pool("pool3/3x3_s2", blob, "MAX", 3, 2)
            blob = "pool3/3x3_s2"
        elif block == "4a" and not deploy:
            s += _aux_head("loss1", blob, "loss1/loss1")
        elif block == "4d" and not deploy:
            s += _aux_head("loss2", blob, "loss2/loss1")  # sic: Caffe's top name
        elif block == "4e":
            s += _pool("pool4/3x3_s2", blob, "MAX", 3, 2)
            blob = "pool4/3x3_s2"
    s += _pool("pool5/7x7_s1", blob, "AVE", 7, 1)
    s += _dropout("pool5/drop_7x7_s1", "pool5/7x7_s1", 0.4)
    s += _ip("loss3/classifier", "pool5/7x7_s1", 1000, 0)
    if deploy:
        s += _layer("prob", "Softmax", ("loss3/classifier",), ("prob",))
    else:
        s += _losses("loss3", "loss3/classifier", "loss3/loss3", 1)
    return s


FILES = {"train_val.prototxt": lambda: googlenet(deploy=False),
         "deploy.prototxt": lambda: googlenet(deploy=True)}


def default_dir():
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "models", "bvlc_googlenet")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=default_dir(), help="output folder (default: %(default)s)")
    ap.add_argument("--check", action="store_true",
                    help="do not write; exit 1 if a file is missing or differs")
    args = ap.parse_args(argv)
    stale = []
    for fname, make in sorted(FILES.items()):
        path = os.path.join(args.out, fname)
        text = make()
        if args.check:
            try:
                with open(path, encoding="utf-8") as f:
                    if f.read() != text:
                        stale.append(path)
            except OSError:
                stale.append(path)
        else:
            os.makedirs(args.out, exist_ok=True)
            with open(path, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
            print("wrote %s" % path)
    if stale:
        print("out of date: %s (run tools/gen_googlenet.py)" % ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
