"""The fuzz corpus: generated (never stored) net and solver prototxts, weight files, solver
states, data sources and Python layers, each declaring what caffepy must do with it.

``cases()`` returns the same list of :class:`Case` on every call (every random choice comes
from a ``random.Random`` seeded by the case's family and number). A case is

* valid: its entry point (``caffepy.Net``, ``Net.copy_from``, ``Net(..., weights=)``,
  ``Solver.restore``, ``get_solver`` + ``step``, ``caffepy train`` / ``caffepy test``) runs, and
  every array it returns is non-empty and finite; most also check real values (the loaded
  weights equal the saved ones, a data layer's top equals the stored records, ...); or
* invalid: the entry point raises a ``caffepy.CaffepyError`` whose message holds every string
  of ``names`` (the file, line, layer, blob or field at fault).

``build(d)`` writes the case's files into the empty folder ``d``; ``run(d)`` calls caffepy on
them. Cases marked ``subprocess`` (corrupt LMDB pages, huge sizes, the command line) run in a
child process: ``python fuzz_corpus.py run CASE_ID DIR RESULT.json``; the test then checks
that the child was not killed by a signal and that its peak RSS stayed below the limit.
The child is started through ``fuzz_corpus.py measure`` (see :func:`measure_main`), which
measures its peak. ``slow`` cases are the long tail (more seeds of each family), run with
``pytest -m slow``.
"""
import json
import math
import os
import random
import struct
import sys
import zlib

SEED = 20261206
MEMORY_LIMIT_MB = 200


class Case:
    __slots__ = ("id", "category", "valid", "build", "run", "names", "subprocess", "slow",
                 "cli", "xfail")

    def __init__(self, id, category, valid, build, run, names=(), subprocess=False,
                 slow=False, cli=False):
        self.id = id
        self.category = category
        self.valid = valid
        self.build = build
        self.run = run
        self.names = tuple(names)
        self.subprocess = subprocess or cli
        self.slow = slow
        self.cli = cli
        self.xfail = None

    def __repr__(self):
        return "Case(%s)" % self.id


def rng_for(family, i):
    return random.Random(zlib.crc32(("%d/%s/%d" % (SEED, family, i)).encode()))


def write(d, name, data):
    path = os.path.join(d, name)
    with open(path, "wb" if isinstance(data, (bytes, bytearray)) else "w") as f:
        f.write(data)
    return path


# ---------------------------------------------------------------------------------------
# net text
# ---------------------------------------------------------------------------------------

def layer_text(name, type_, bottoms=(), tops=(), body=""):
    """One layer, one field per line (so that a mutation knows its line number)."""
    lines = ["layer {", '  name: "%s"' % name, '  type: "%s"' % type_]
    lines += ['  bottom: "%s"' % b for b in bottoms]
    lines += ['  top: "%s"' % t for t in tops]
    if body:
        lines += ["  " + ln for ln in body.strip("\n").split("\n")]
    lines.append("}")
    return "\n".join(lines) + "\n"


def dummy_data(n, c, h, w, label_value=1, name="data"):
    shape = "".join("  dim: %d\n" % v for v in ((n, c, h, w) if h else (n, c)))
    body = ("dummy_data_param {\n  shape {\n%s  }\n  shape {\n    dim: %d\n  }\n"
            "  data_filler {\n    type: \"gaussian\"\n    std: 1\n  }\n"
            "  data_filler {\n    type: \"constant\"\n    value: %d\n  }\n}"
            % (shape.replace("  dim", "    dim"), n, label_value))
    return layer_text(name, "DummyData", (), ("data", "label"), body)


def ip_text(name, bottom, top, num_output, extra=""):
    body = ("inner_product_param {\n  num_output: %d\n  weight_filler {\n    type: \"xavier\"\n"
            "  }\n  bias_filler {\n    type: \"constant\"\n    value: 0.1\n  }\n%s}"
            % (num_output, extra))
    return layer_text(name, "InnerProduct", (bottom,), (top,), body)


def loss_text(bottom, name="loss"):
    return layer_text(name, "SoftmaxWithLoss", (bottom, "label"), ("loss",))


def random_body(rng, c, h, w):
    """A random chain of layers on a C x H x W input that always fits: (text, last top,
    [(layer name, type, bottom, top)])."""
    parts, info = [], []
    cur = "data"
    flat = h == 0
    for i in range(rng.randint(1, 4)):
        kinds = ["ReLU", "Sigmoid", "TanH", "AbsVal", "ELU", "Power", "Dropout", "InnerProduct"]
        if not flat:
            kinds += ["Convolution", "Convolution", "Pooling", "LRN", "BatchNorm", "Flatten"]
        kind = rng.choice(kinds)
        name = "%s%d" % (kind.lower(), i)
        top = name
        body = ""
        if kind in ("ReLU", "Sigmoid", "TanH", "AbsVal", "ELU", "Dropout") and rng.random() < 0.5:
            if kind != "AbsVal":                   # Caffe's AbsVal refuses to run in place
                top = cur                          # in place
        if kind == "Convolution":
            k = rng.randint(1, min(h, w, 3))
            pad = rng.randint(0, k - 1)
            stride = rng.randint(1, 2)
            no = rng.randint(1, 4)
            body = ("convolution_param {\n  num_output: %d\n  kernel_size: %d\n  pad: %d\n"
                    "  stride: %d\n  weight_filler {\n    type: \"gaussian\"\n    std: 0.1\n"
                    "  }\n}" % (no, k, pad, stride))
            h = (h + 2 * pad - k) // stride + 1
            w = (w + 2 * pad - k) // stride + 1
            c = no
        elif kind == "Pooling":
            if min(h, w) < 2:
                kind, body = "ReLU", ""
            else:
                stride = rng.randint(1, 2)
                pool = rng.choice(["MAX", "AVE"])
                body = "pooling_param {\n  pool: %s\n  kernel_size: 2\n  stride: %d\n}" % (
                    pool, stride)
                h = int(math.ceil((h - 2) / float(stride))) + 1
                w = int(math.ceil((w - 2) / float(stride))) + 1
        elif kind == "LRN":
            body = "lrn_param {\n  local_size: 3\n  alpha: 0.0001\n  beta: 0.75\n}"
        elif kind == "BatchNorm":
            body = "batch_norm_param {\n  eps: 0.001\n}"
        elif kind == "Power":
            body = "power_param {\n  power: 2\n  scale: 0.5\n  shift: 0.25\n}"
        elif kind == "Dropout":
            body = "dropout_param {\n  dropout_ratio: %.2f\n}" % rng.choice([0.1, 0.3, 0.5])
        elif kind == "Flatten":
            c, h, w, flat = c * h * w, 0, 0, True
        elif kind == "InnerProduct":
            no = rng.randint(2, 6)
            parts.append(ip_text(name, cur, top, no))
            info.append((name, kind, cur, top))
            cur, c, h, w, flat = top, no, 0, 0, True
            continue
        parts.append(layer_text(name, kind, (cur,), (top,), body))
        info.append((name, kind, cur, top))
        cur = top
    return "".join(parts), cur, info


def random_net(rng, classes=None):
    """A random valid TRAIN net: DummyData -> random chain -> InnerProduct -> SoftmaxWithLoss.
    Returns (text, [(layer name, type, bottom, top)])."""
    n, c = rng.randint(1, 3), rng.randint(1, 3)
    h = w = rng.randint(4, 8)
    if rng.random() < 0.2:
        h = w = 0
    classes = classes or rng.randint(2, 5)
    body, last, info = random_body(rng, c, h, w)
    text = 'name: "fuzz%d"\n' % rng.randint(0, 999)
    text += dummy_data(n, c, h, w)
    text += body + ip_text("score", last, "score", classes)
    text += loss_text("score")
    info = ([("data", "DummyData", None, "data")] + info
            + [("score", "InnerProduct", last, "score"),
               ("loss", "SoftmaxWithLoss", "score", "loss")])
    return text, info


BASE_NET = ('name: "base"\n' + dummy_data(2, 3, 0, 0)
            + ip_text("ip1", "data", "ip1", 4) + layer_text("relu1", "ReLU", ("ip1",), ("ip1",))
            + ip_text("ip2", "ip1", "ip2", 3) + loss_text("ip2"))


def line_of(text, needle, start=0):
    """1-based line number of the first ``needle`` at or after character ``start``."""
    return text.count("\n", 0, text.index(needle, start)) + 1


# ---------------------------------------------------------------------------------------
# entry points (run in this process or in a child)
# ---------------------------------------------------------------------------------------

def _phase(phase):
    import caffepy
    return caffepy.TRAIN if phase == "TRAIN" else caffepy.TEST


def run_net(path, phase="TRAIN", weights=None, backward=True):
    """caffepy.Net(path, phase[, weights=]); forward (and backward); every output, param and
    param diff."""
    import caffepy
    caffepy.set_random_seed(1701)
    if weights is None:
        net = caffepy.Net(path, _phase(phase))
    else:
        net = caffepy.Net(path, _phase(phase), weights=weights)
    try:
        return net_results(net, backward)
    finally:
        net.close()


def host(arr):
    """A NumPy copy of a blob's array (a CuPy array in GPU mode)."""
    from caffepy.backend import to_numpy
    import numpy as np
    return np.array(to_numpy(arr))


def net_results(net, backward=True):
    out = {k: host(v) for k, v in net.forward().items()}
    if backward:
        net.backward()
    for name, blobs in net.params.items():
        for j, b in enumerate(blobs):
            out["%s/%d" % (name, j)] = host(b.data)
            if backward:
                out["%s/%d.diff" % (name, j)] = host(b.diff)
    return out


def check_loss(res, key="loss"):
    """The softmax loss of a net: a non-negative scalar."""
    v = float(res[key].ravel()[0])
    if not v >= 0:
        raise AssertionError("loss %r is not >= 0" % v)
    return res


def run_copy_from(net_path, weights, phase="TRAIN", expect=None, via="copy_from"):
    """Build the net, load ``weights`` (copy_from or Net(..., weights=)), compare each param
    named in ``expect`` ({"layer/j": array}) with the loaded one, bit for bit."""
    import numpy as np
    import caffepy
    caffepy.set_random_seed(1701)
    if via == "copy_from":
        net = caffepy.Net(net_path, _phase(phase))
        net.copy_from(weights)
    else:
        net = caffepy.Net(net_path, _phase(phase), weights=weights)
    try:
        for key, arr in (expect or {}).items():
            layer, j = key.rsplit("/", 1)
            got = host(net.params[layer][int(j)].data)
            if got.shape != arr.shape or not np.array_equal(got, arr):
                raise AssertionError("param %s after loading differs from the saved one" % key)
        return net_results(net)
    finally:
        net.close()


def saved_params(path):
    """{"layer/j": array} of a .caffemodel or .caffemodel.h5 written by caffepy."""
    import numpy as np
    out = {}
    if path.endswith(".h5"):
        import h5py
        with h5py.File(path, "r") as f:
            for lname in f["data"]:
                for j in f["data"][lname]:
                    out["%s/%s" % (lname, j)] = np.asarray(f["data"][lname][j], np.float32)
        return out
    from caffepy.proto import caffe_pb2
    p = caffe_pb2.NetParameter.FromString(open(path, "rb").read())
    for lp in p.layer:
        for j, b in enumerate(lp.blobs):
            out["%s/%d" % (lp.name, j)] = np.asarray(b.data, np.float32).reshape(
                tuple(b.shape.dim))
    return out


def make_weights(d, net_name="w.prototxt", text=BASE_NET, model="w.caffemodel", h5=False,
                 seed=7):
    """A net file and a weight file saved by caffepy from it (random fillers, seeded)."""
    import caffepy
    net_path = write(d, net_name, text)
    caffepy.set_random_seed(seed)
    net = caffepy.Net(net_path, caffepy.TRAIN)
    path = os.path.join(d, model)
    (net.save_hdf5 if h5 else net.save)(path)
    net.close()
    return net_path, path


def run_solver(path, iters=2, restore=None, expect_iter=None, expect_history=None):
    """get_solver(path) [+ restore] + step(iters): the smoothed loss, params and history."""
    import numpy as np
    import caffepy
    from caffepy.solver import get_solver
    caffepy.set_random_seed(1701)
    s = get_solver(path)
    try:
        if restore is not None:
            s.restore(restore)
            if expect_iter is not None and s.iter != expect_iter:
                raise AssertionError("restored iter %d, expected %d" % (s.iter, expect_iter))
            for i, h in enumerate(expect_history or ()):
                if not np.array_equal(host(s.history[i]), h):
                    raise AssertionError("restored history blob %d differs" % i)
        start = s.iter
        s.step(iters)
        if s.iter != start + iters:
            raise AssertionError("iter %d after step(%d) from %d" % (s.iter, iters, start))
        out = {"smoothed_loss": np.array([float(s.smoothed_loss)])}
        for name, blobs in s.net.params.items():
            for j, b in enumerate(blobs):
                out["%s/%d" % (name, j)] = host(b.data)
        for i, h in enumerate(s.history):
            out["history/%d" % i] = host(h)
        return out
    finally:
        s.net.close()
        for t in getattr(s, "test_nets", []):
            t.close()


def solver_text(net_path, d, extra="", type_="SGD", policy='lr_policy: "fixed"\n'):
    return ('net: "%s"\nbase_lr: 0.01\nmomentum: 0.9\nweight_decay: 0.0005\n%s'
            'max_iter: 100\ndisplay: 0\nsnapshot: 0\nsnapshot_prefix: "%s"\n'
            'random_seed: 1\ntype: "%s"\n%s'
            % (net_path, policy, os.path.join(d, "snap"), type_, extra))


def make_snapshot(d, h5=False, type_="SGD", iters=2):
    """Train BASE_NET ``iters`` steps and snapshot: (solver path, model file, state file,
    [history arrays])."""
    import caffepy
    from caffepy.solver import get_solver
    net_path = write(d, "snapnet.prototxt", BASE_NET)
    extra = "snapshot_format: HDF5\n" if h5 else ""
    text = solver_text(net_path, d, extra, type_=type_)
    if type_ in ("AdaGrad", "RMSProp"):
        text = text.replace("momentum: 0.9\n", "")
    sp = write(d, "solver.prototxt", text)
    caffepy.set_random_seed(1701)
    s = get_solver(sp)
    s.step(iters)
    model, state = s.snapshot()
    hist = [host(h) for h in s.history]
    s.net.close()
    return sp, model, state, hist


# ---------------------------------------------------------------------------------------
# the families
# ---------------------------------------------------------------------------------------

CASES = []


def add(family, i, category, valid, build, run, names=(), subprocess=False, slow=False,
        cli=False):
    CASES.append(Case("%s-%03d" % (family, i), category, valid, build, run, names, subprocess,
                      slow, cli))


def split(n_default, n_slow):
    """(i, slow) for n_default default and n_slow slow seeds of a family."""
    return [(i, i >= n_default) for i in range(n_default + n_slow)]


# -- net prototxt: valid ----------------------------------------------------------------

def fam_net_valid():
    for i, slow in split(40, 40):
        rng = rng_for("net-valid", i)
        text, _ = random_net(rng)
        phase = rng.choice(["TRAIN", "TEST"])

        def build(d, text=text):
            write(d, "net.prototxt", text)

        def run(d, phase=phase):
            return check_loss(run_net(os.path.join(d, "net.prototxt"), phase))
        add("net-valid", i, "net", True, build, run, slow=slow)

    # legacy V1 'layers' nets (upgraded on load), comments and odd whitespace
    for i, slow in split(4, 4):
        rng = rng_for("net-valid-v1", i)
        no = rng.randint(2, 5)
        text = ('name: "v1"  # a V1 net\nlayers {\n name: "data" type: DUMMY_DATA top: "data" '
                'top: "label"\n dummy_data_param { shape { dim: 2 dim: %d } shape { dim: 2 }\n'
                ' data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" '
                'value: 1 } }\n}\nlayers {\n  name: "ip" type: INNER_PRODUCT\n  bottom: "data"'
                ' top: "ip"\n inner_product_param { num_output: %d weight_filler { type: '
                '"xavier" } }\n  blobs_lr: 1 blobs_lr: 2\n}\n\n\t# tab\nlayers { name: "loss" '
                'type: SOFTMAX_LOSS bottom: "ip" bottom: "label" top: "loss" }\n'
                % (rng.randint(1, 6), no))

        def build(d, text=text):
            write(d, "v1.prototxt", text)

        def run(d):
            return check_loss(run_net(os.path.join(d, "v1.prototxt")))
        add("net-valid-v1", i, "net", True, build, run, slow=slow)


# -- net prototxt: text-level mutations ----------------------------------------------------

def _net_case(family, i, slow, text, names, fname="bad.prototxt", phase="TRAIN",
              subprocess=False, category="net"):
    def build(d, text=text):
        write(d, fname, text)

    def run(d):
        return run_net(os.path.join(d, fname), phase)
    add(family, i, category, False, build, run, names, subprocess=subprocess, slow=slow)


def fam_net_text():
    # unknown field names
    for i, slow in split(8, 8):
        rng = rng_for("net-unknown-field", i)
        text, _ = random_net(rng)
        lines = text.split("\n")
        cands = [k for k, ln in enumerate(lines) if ":" in ln and "name:" not in ln]
        k = rng.choice(cands)
        field = lines[k].split(":")[0].strip()
        bad = field[:-1] + rng.choice("xqz") + "_" + field[-1]
        lines[k] = lines[k].replace(field, bad, 1)
        _net_case("net-unknown-field", i, slow, "\n".join(lines),
                  ("bad.prototxt:%d" % (k + 1), bad))

    # wrong value types
    wrong = [("num_output: %d", "num_output: \"many\""), ("num_output: %d", "num_output: 2.5"),
             ("num_output: %d", "num_output: -3"), ("num_output: %d", "num_output: true"),
             ("std: 1", "std: \"one\""), ("value: 0.1", "value: zero"),
             ("top: \"ip1\"", "top: 5"), ("num_output: %d", "num_output: 99999999999"),
             ("type: \"gaussian\"", "type: gaussian"), ("value: 1", "value: [1, 2")]
    for i, slow in split(10, 0):
        old, new = wrong[i]
        text = BASE_NET
        if "%d" in old:
            old = "num_output: 4"
        line = line_of(text, old)
        text = text.replace(old, new, 1)
        _net_case("net-wrong-type", i, slow, text, ("bad.prototxt:%d" % line,))

    # a value of the wrong kind on a random line: a quoted string where a number, bool or enum
    # goes, a bare number where a string goes
    for i, slow in split(12, 12):
        rng = rng_for("net-wrong-kind", i)
        text, _ = random_net(rng)
        lines = text.split("\n")
        cands = [k for k, ln in enumerate(lines) if ": " in ln]
        k = rng.choice(cands)
        key, value = lines[k].split(": ", 1)
        new = str(rng.randint(0, 99)) if value.startswith('"') else '"%s"' % rng.choice(
            ["zz", "1", "true", "MAX", ""])
        lines[k] = "%s: %s" % (key, new)
        _net_case("net-wrong-kind", i, slow, "\n".join(lines), ("bad.prototxt:%d" % (k + 1),))

    # unknown enum values
    for i, slow in split(3, 0):
        text = ('name: "e"\n' + dummy_data(2, 1, 4, 4)
                + layer_text("pool", "Pooling", ("data",), ("pool",),
                             "pooling_param {\n  pool: %s\n  kernel_size: 2\n}"
                             % ["FOO", "MAXIMUM", "3"][i])
                + ip_text("ip", "pool", "ip", 2) + loss_text("ip"))
        _net_case("net-bad-enum", i, slow, text,
                  ("bad.prototxt:%d" % line_of(text, "pool: "),))

    # duplicate singular fields
    for i, slow in split(4, 0):
        old = ["num_output: 4", 'name: "ip2"', "std: 1", "value: 0.1"][i]
        line = line_of(BASE_NET, old)
        text = BASE_NET.replace(old, old + "\n" + old, 1)
        field = old.split(":")[0]
        _net_case("net-dup-field", i, slow, text, ("bad.prototxt:%d" % (line + 1), field))

    # truncated text (cut inside a layer: the braces never close)
    for i, slow in split(12, 12):
        rng = rng_for("net-truncated", i)
        text, _ = random_net(rng)
        starts = [k for k in range(len(text)) if text.startswith("layer {", k)]
        s = rng.choice(starts)
        end = text.index("\n}\n", s)
        cut = rng.randint(s + 1, end)
        _net_case("net-truncated", i, slow, text[:cut], ("bad.prototxt",))

    # bytes that are not UTF-8
    for i, slow in split(8, 8):
        rng = rng_for("net-non-utf8", i)
        text, _ = random_net(rng)
        raw = bytearray(text.encode())
        pos = rng.randint(0, len(raw))
        bad = rng.choice([b"\xff", b"\xfe\xff", b"\x80", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80"])
        _net_case("net-non-utf8", i, slow, bytes(raw[:pos] + bad + raw[pos:]),
                  ("bad.prototxt", "line %d" % (raw[:pos].count(b"\n") + 1)))

    # random bytes and random printable garbage
    for i, slow in split(4, 4):
        rng = rng_for("net-garbage", i)
        if i % 2:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 400)))
        else:
            data = "".join(rng.choice("abc{}:\"# \n0123.-_") for _ in range(rng.randint(5, 300)))
            # make sure it does not parse by accident
            data = "layer {\n" + data
        _net_case("net-garbage", i, slow, data, ("bad.prototxt",))

    # missing file
    for i, slow in split(1, 0):
        def build(d):
            pass

        def run(d):
            return run_net(os.path.join(d, "absent_net.prototxt"))
        add("net-missing-file", i, "net", False, build, run, ("absent_net.prototxt",))


# -- net prototxt: graph and layer mistakes ------------------------------------------------

def fam_net_graph():
    # unknown layer types
    for i, slow in split(8, 4):
        rng = rng_for("net-unknown-type", i)
        text, info = random_net(rng)
        name, type_, _, _ = rng.choice(info[1:])
        newtype = "Fz" + "".join(rng.choice("abcdefgh") for _ in range(5))
        text = text.replace('name: "%s"\n  type: "%s"' % (name, type_),
                            'name: "%s"\n  type: "%s"' % (name, newtype), 1)
        _net_case("net-unknown-type", i, slow, text, (name, newtype))

    # a bottom no earlier layer produces
    for i, slow in split(8, 4):
        rng = rng_for("net-bad-bottom", i)
        text, info = random_net(rng)
        name, _, bottom, _ = rng.choice(info[1:])
        ghost = "ghost_%d" % rng.randint(0, 999)
        marker = 'name: "%s"' % name
        s = text.index(marker)
        text = text[:s] + text[s:].replace('bottom: "%s"' % bottom, 'bottom: "%s"' % ghost, 1)
        _net_case("net-bad-bottom", i, slow, text, (ghost, name))

    # a cycle: a layer reads a blob that only a later layer produces
    for i, slow in split(6, 4):
        rng = rng_for("net-cycle", i)
        text, info = random_net(rng)
        # a non-in-place later top
        later = [(k, t) for k, (n, _, b, t) in enumerate(info) if k >= 2 and t != b]
        k, t = rng.choice(later)
        j = rng.randint(1, k - 1)
        name, _, bottom, _ = info[j]
        s = text.index('name: "%s"' % name)
        text = text[:s] + text[s:].replace('bottom: "%s"' % bottom, 'bottom: "%s"' % t, 1)
        _net_case("net-cycle", i, slow, text, (t, name))

    # a top produced by two layers (not in place)
    for i, slow in split(6, 4):
        rng = rng_for("net-dup-top", i)
        text, info = random_net(rng)
        produced = [t for (_, _, b, t) in info[:-2] if t != b and t not in ("data",)]
        victim = rng.choice(produced + ["label"])
        src = "data" if victim != "data" else "label"
        dup = ip_text("dupe", src, victim, 3)
        s = text.index('layer {\n  name: "score"')
        text = text[:s] + dup + text[s:]
        _net_case("net-dup-top", i, slow, text, (victim, "dupe"))

    # include/exclude rules: a bottom whose producer the phase, stage or level filters out
    rules = [
        ("include {\n  phase: TEST\n}", "TRAIN", False),
        ("include {\n  phase: TRAIN\n}", "TEST", False),
        ('include {\n  stage: "deploy"\n}', "TRAIN", False),
        ("include {\n  min_level: 2\n}", "TEST", False),
        ('exclude {\n  not_stage: "x"\n}', "TRAIN", False),
        ("include {\n  phase: TRAIN\n}", "TRAIN", True),
        ('exclude {\n  stage: "deploy"\n}', "TEST", True),
        ("include {\n  max_level: 0\n}", "TRAIN", True),
    ]
    for i, (rule, phase, valid) in enumerate(rules):
        text = BASE_NET.replace('  top: "ip2"\n', '  top: "ip2"\n  ' + rule.replace(
            "\n", "\n  ") + "\n", 1)

        def build(d, text=text):
            write(d, "rules.prototxt", text)

        def run(d, phase=phase):
            return check_loss(run_net(os.path.join(d, "rules.prototxt"), phase))
        add("net-rules", i, "net", valid, build, run, () if valid else ("ip2", "loss"))

    # top j names bottom k != j (in place only at the same index)
    for i, slow in split(2, 0):
        text = ('name: "c"\n' + dummy_data(2, 3, 0, 0)
                + layer_text("cat", "Concat", ("data", "label" if i else "data"),
                             ("label" if i else "data",)) + "")
        names = ("label" if i else "data",)
        _net_case("net-inplace-index", i, slow, text + ip_text("ip", "data", "ip", 2)
                  + loss_text("ip"), names)

    # layers that cannot run in place
    inplace = [("InnerProduct", "inner_product_param {\n  num_output: 3\n}"),
               ("Convolution", "convolution_param {\n  num_output: 2\n  kernel_size: 3\n}"),
               ("Pooling", "pooling_param {\n  pool: MAX\n  kernel_size: 2\n  stride: 2\n}"),
               ("Flatten", ""),
               ("Reshape", "reshape_param {\n  shape {\n    dim: 0\n    dim: -1\n  }\n}"),
               ("AbsVal", "")]
    for i, slow in split(len(inplace), 0):
        type_, body = inplace[i]
        text = ('name: "ip"\n' + dummy_data(2, 2, 6, 6)
                + layer_text("self", type_, ("data",), ("data",), body)
                + ip_text("ip", "data", "ip", 2) + loss_text("ip"))
        _net_case("net-inplace-bad", i, slow, text, ("self", "data"))

    # missing required pieces
    missing = [
        ("conv without kernel_size", "conv", layer_text(
            "conv", "Convolution", ("data",), ("conv",),
            "convolution_param {\n  num_output: 2\n}")),
        ("pooling without kernel_size", "pool", layer_text(
            "pool", "Pooling", ("data",), ("conv",), "pooling_param {\n  pool: MAX\n}")),
        ("layer without type", "typeless", '''layer {\n  name: "typeless"\n  bottom: "data"
  top: "conv"\n}\n'''),
        ("loss without label", "loss", None),
        ("input without shape", "in", None),
        ("dummy data without shape", "dd", None),
        ("data without source", "db", None),
        ("ip without num_output", "ipz", layer_text(
            "ipz", "InnerProduct", ("data",), ("conv",))),
        ("reshape without shape", "rs", layer_text("rs", "Reshape", ("data",), ("conv",))),
        ("python without module", "py", layer_text(
            "py", "Python", ("data",), ("conv",), "python_param {\n  layer: \"L\"\n}")),
        ("image data without source", "imgs", None),
        ("hdf5 data without source", "h5d", None),
    ]
    for i, slow in split(len(missing), 0):
        what, lname, mid = missing[i]
        if lname == "loss":
            text = ('name: "m"\n' + dummy_data(2, 3, 0, 0) + ip_text("ip", "data", "ip", 2)
                    + layer_text("loss", "SoftmaxWithLoss", ("ip",), ("loss",)))
        elif lname == "in":
            text = 'name: "m"\n' + layer_text("in", "Input", (), ("x",))
        elif lname == "dd":
            text = 'name: "m"\n' + layer_text("dd", "DummyData", (), ("x",))
        elif lname == "db":
            text = 'name: "m"\n' + layer_text("db", "Data", (), ("x", "y"),
                                              "data_param {\n  batch_size: 2\n  backend: LMDB\n}")
        elif lname == "imgs":
            text = 'name: "m"\n' + layer_text("imgs", "ImageData", (), ("x", "y"),
                                              "image_data_param {\n  batch_size: 2\n}")
        elif lname == "h5d":
            text = 'name: "m"\n' + layer_text("h5d", "HDF5Data", (), ("x", "y"),
                                              "hdf5_data_param {\n  batch_size: 2\n}")
        else:
            text = ('name: "m"\n' + dummy_data(2, 2, 5, 5) + mid
                    + ip_text("ip", "conv", "ip", 2) + loss_text("ip"))
        _net_case("net-missing-piece", i, slow, text, (lname,))

    # shapes that do not fit, out-of-range axes and counts: (text maker, names)
    def net_with(mid, top, n=2, c=3, h=5, w=5):
        return ('name: "s"\n' + dummy_data(n, c, h, w) + mid + ip_text("ip", top, "ip", 2)
                + loss_text("ip"))
    dd2 = layer_text("data2", "DummyData", (), ("other",),
                     "dummy_data_param {\n  shape {\n    dim: 2\n    dim: 4\n    dim: 5\n"
                     "    dim: 5\n  }\n}")
    shapes = [
        (net_with(dd2 + layer_text("elt", "Eltwise", ("data", "other"), ("elt",)), "elt"),
         ("elt",)),
        (net_with(layer_text("d3", "DummyData", (), ("other",),
                             "dummy_data_param {\n  shape {\n    dim: 2\n    dim: 4\n"
                             "    dim: 6\n    dim: 5\n  }\n}")
                  + layer_text("cat", "Concat", ("data", "other"), ("cat",)), "cat"),
         ("cat",)),
        (net_with(layer_text("conv", "Convolution", ("data",), ("conv",),
                             "convolution_param {\n  num_output: 2\n  kernel_size: 9\n}"),
                  "conv"), ("conv",)),
        (net_with(layer_text("pool", "Pooling", ("data",), ("pool",),
                             "pooling_param {\n  kernel_size: 2\n  pad: 2\n}"), "pool"),
         ("pool",)),
        (net_with(layer_text("rs", "Reshape", ("data",), ("rs",),
                             "reshape_param {\n  shape {\n    dim: -1\n    dim: -1\n  }\n}"),
                  "rs"), ("rs",)),
        (net_with(layer_text("rs", "Reshape", ("data",), ("rs",),
                             "reshape_param {\n  shape {\n    dim: 7\n    dim: 11\n  }\n}"),
                  "rs"), ("rs",)),
        (net_with(layer_text("sl", "Slice", ("data",), ("a", "b"),
                             "slice_param {\n  axis: 1\n  slice_point: 9\n}"), "a"), ("sl",)),
        (net_with(layer_text("ipx", "InnerProduct", ("data",), ("ipx",),
                             "inner_product_param {\n  num_output: 2\n  axis: 5\n}"), "ipx"),
         ("ipx",)),
        (net_with(layer_text("cat", "Concat", ("data", "data"), ("cat",),
                             "concat_param {\n  axis: 7\n}"), "cat"), ("cat",)),
        (net_with(layer_text("sm", "Softmax", ("data",), ("sm",),
                             "softmax_param {\n  axis: -9\n}"), "sm"), ("sm",)),
        (net_with(layer_text("fl", "Flatten", ("data",), ("fl",),
                             "flatten_param {\n  axis: 3\n  end_axis: 1\n}"), "fl"), ("fl",)),
        (net_with(layer_text("rl", "ReLU", ("data",), ("rl",), "loss_weight: 1\nloss_weight: 2"),
                  "data"), ("rl",)),
        (net_with(layer_text("rl", "ReLU", ("data",), ("rl",), "param {\n  lr_mult: 1\n}"),
                  "rl"), ("rl",)),
        (net_with(layer_text("rl", "ReLU", ("data",), ("rl",),
                             "include {\n  phase: TRAIN\n}\nexclude {\n  phase: TEST\n}"), "rl"),
         ("rl",)),
        (net_with(layer_text("rl", "ReLU", ("data",), ("rl",),
                             "propagate_down: true\npropagate_down: false"), "rl"), ("rl",)),
        ('name: "sh"\n' + dummy_data(2, 6, 0, 0)
         + ip_text("a", "data", "a", 3).replace(
             "inner_product_param", 'param {\n  name: "shared"\n}\ninner_product_param', 1)
         + ip_text("b", "a", "b", 2).replace(
             "inner_product_param", 'param {\n  name: "shared"\n}\ninner_product_param', 1)
         + loss_text("b"), ("shared",)),
        (net_with(layer_text("conv", "Convolution", ("data",), ("conv",),
                             "convolution_param {\n  num_output: 2\n  kernel_size: 3\n"
                             "  weight_filler {\n    type: \"nofiller\"\n  }\n}"), "conv"),
         ("nofiller",)),
        (net_with(layer_text("crop", "Crop", ("data", "other"), ("crop",),
                             "crop_param {\n  axis: 2\n  offset: 1\n}")
                  .replace("layer {", dd2.replace("dim: 5", "dim: 9") + "layer {", 1), "crop"),
         ("crop",)),
        ('name: "lab"\n' + dummy_data(2, 3, 0, 0)
         + layer_text("l3", "DummyData", (), ("lab3",),
                      "dummy_data_param {\n  shape {\n    dim: 3\n  }\n}")
         + ip_text("ip", "data", "ip", 2)
         + layer_text("loss", "SoftmaxWithLoss", ("ip", "lab3"), ("loss",)), ("loss",)),
        (net_with(layer_text("ip3", "InnerProduct", ("data", "data"), ("ip3",),
                             "inner_product_param {\n  num_output: 2\n}"), "ip3"), ("ip3",)),
        (net_with(layer_text("conv", "Convolution", ("data",), ("conv",),
                             "convolution_param {\n  num_output: 3\n  kernel_size: 1\n"
                             "  group: 2\n}"), "conv"), ("conv",)),
        (net_with(layer_text("conv", "Convolution", ("data",), ("conv",),
                             "convolution_param {\n  num_output: 3\n  kernel_size: 1\n"
                             "  stride: 0\n}"), "conv"), ("conv",)),
        (net_with(layer_text("pool", "Pooling", ("data",), ("pool",),
                             "pooling_param {\n  kernel_size: 2\n  stride: 0\n}"), "pool"),
         ("pool",)),
        (net_with(layer_text("tile", "Tile", ("data",), ("tile",),
                             "tile_param {\n  axis: 6\n  tiles: 2\n}"), "tile"), ("tile",)),
    ]
    for i, slow in split(len(shapes), 0):
        text, names = shapes[i]
        _net_case("net-shape", i, slow, text, names)

    # negative sizes and axes
    negs = [
        ("in", 'name: "n"\n' + layer_text("in", "Input", (), ("data",),
                                          "input_param {\n  shape {\n    dim: 2\n    dim: -3\n"
                                          "  }\n}")),
        ("dd", 'name: "n"\n' + layer_text("dd", "DummyData", (), ("data",),
                                          "dummy_data_param {\n  shape {\n    dim: -1\n"
                                          "    dim: 4\n  }\n}")),
        ("rs", 'name: "n"\n' + dummy_data(2, 3, 0, 0)
         + layer_text("rs", "Reshape", ("data",), ("rs",),
                      "reshape_param {\n  shape {\n    dim: -2\n    dim: 3\n  }\n}")),
        ("rs", 'name: "n"\n' + dummy_data(2, 3, 0, 0)
         + layer_text("rs", "Reshape", ("data",), ("rs",),
                      "reshape_param {\n  shape {\n    dim: 3\n  }\n  axis: -9\n}")),
        ("arg", 'name: "n"\n' + dummy_data(2, 3, 0, 0)
         + layer_text("arg", "ArgMax", ("data",), ("arg",), "argmax_param {\n  axis: -5\n}")),
        ("red", 'name: "n"\n' + dummy_data(2, 3, 0, 0)
         + layer_text("red", "Reduction", ("data",), ("red",), "reduction_param {\n  axis: 4\n}")),
        ("sc", 'name: "n"\n' + dummy_data(2, 3, 0, 0)
         + layer_text("sc", "Scale", ("data",), ("sc",), "scale_param {\n  axis: -8\n}")),
        ("emb", 'name: "n"\n' + dummy_data(2, 3, 0, 0)
         + layer_text("emb", "Embed", ("label",), ("emb",),
                      "embed_param {\n  num_output: 2\n  input_dim: 0\n}")),
    ]
    for i, slow in split(len(negs), 0):
        name, text = negs[i]
        _net_case("net-negative", i, slow, text, (name,))

    # huge sizes (in a child process: no allocation may happen)
    huge = [
        ("dd", 'name: "h"\n' + layer_text("dd", "DummyData", (), ("data",),
                                          "dummy_data_param {\n  shape {\n    dim: 100000\n"
                                          "    dim: 100000\n    dim: 100000\n  }\n}")),
        ("in", 'name: "h"\n' + layer_text("in", "Input", (), ("data",),
                                          "input_param {\n  shape {\n    dim: 1000000000000\n"
                                          "    dim: 3\n  }\n}")),
        ("big", 'name: "h"\n' + dummy_data(2, 3, 0, 0) + ip_text("big", "data", "big",
                                                                 4000000000)),
        ("conv", 'name: "h"\n' + dummy_data(1, 3, 8, 8)
         + layer_text("conv", "Convolution", ("data",), ("conv",),
                      "convolution_param {\n  num_output: 3000000000\n  kernel_size: 3\n}")),
        ("tile", 'name: "h"\n' + dummy_data(2, 3, 0, 0)
         + layer_text("tile", "Tile", ("data",), ("tile",),
                      "tile_param {\n  axis: 1\n  tiles: 2000000000\n}")),
        ("rs", 'name: "h"\n' + dummy_data(2, 3, 0, 0)
         + layer_text("rs", "Reshape", ("data",), ("rs",),
                      "reshape_param {\n  shape {\n    dim: 4294967296\n    dim: 0\n  }\n}")),
        ("emb", 'name: "h"\n' + dummy_data(2, 3, 0, 0)
         + layer_text("emb", "Embed", ("label",), ("emb",),
                      "embed_param {\n  num_output: 100000\n  input_dim: 100000\n}")),
        ("pad", 'name: "h"\n' + dummy_data(1, 1, 4, 4)
         + layer_text("pad", "Convolution", ("data",), ("pad",),
                      "convolution_param {\n  num_output: 1\n  kernel_size: 1\n"
                      "  pad: 1000000\n}")),
    ]
    for i, slow in split(len(huge), 0):
        name, text = huge[i]
        _net_case("net-huge", i, i >= 4, text, (name,), subprocess=True)


# -- net prototxt: layer parameters Caffe checks (and a few it accepts) ----------------------

def _net_on(mid, top, label=1, dims=(2, 3, 5, 5)):
    return ('name: "l"\n' + dummy_data(*dims, label_value=label) + mid
            + ip_text("ip", top, "ip", 2) + loss_text("ip"))


def _head(label, classes, tail):
    return ('name: "l"\n' + dummy_data(2, 3, 0, 0, label)
            + ip_text("ip", "data", "ip", classes) + tail)


def _filler(type_, extra=""):
    return _net_on(layer_text("conv", "Convolution", ("data",), ("conv",),
                              "convolution_param {\n  num_output: 2\n  kernel_size: 3\n"
                              "  weight_filler {\n    type: \"%s\"\n%s  }\n}" % (type_, extra)),
                   "conv")


def _dd(name, top, *dims):
    return layer_text(name, "DummyData", (), (top,), "dummy_data_param {\n  shape {\n%s  }\n}"
                      % "".join("    dim: %d\n" % v for v in dims))


LAYER_CONFIG = [
    ("loss", _head(7, 3, loss_text("ip"))),
    ("loss", _head(-2, 3, loss_text("ip"))),
    ("acc", _head(9, 3, layer_text("acc", "Accuracy", ("ip", "label"), ("acc",)))),
    ("acc", _head(1, 3, layer_text("acc", "Accuracy", ("ip", "label"), ("acc",),
                                   "accuracy_param {\n  top_k: 5\n}"))),
    ("ml", _head(9, 3, layer_text("sm", "Softmax", ("ip",), ("sm",))
                 + layer_text("ml", "MultinomialLogisticLoss", ("sm", "label"), ("l",)))),
    ("hl", _head(9, 3, layer_text("hl", "HingeLoss", ("ip", "label"), ("l",)))),
    ("nope_infogain.binaryproto", _head(1, 3, layer_text(
        "ig", "InfogainLoss", ("ip", "label"), ("l",),
        'infogain_loss_param {\n  source: "nope_infogain.binaryproto"\n}'))),
    ("sce", _head(1, 3, layer_text("sce", "SigmoidCrossEntropyLoss", ("ip", "label"), ("l",)))),
    ("eu", _head(1, 3, layer_text("eu", "EuclideanLoss", ("ip", "label"), ("l",)))),
    ("elt", _net_on(layer_text("elt", "Eltwise", ("data", "data"), ("elt",),
                               "eltwise_param {\n  coeff: 1\n  coeff: 2\n  coeff: 3\n}"), "elt")),
    ("elt", _net_on(layer_text("elt", "Eltwise", ("data", "data"), ("elt",),
                               "eltwise_param {\n  operation: PROD\n  coeff: 1\n  coeff: 2\n}"),
                    "elt")),
    ("sl", _net_on(layer_text("sl", "Slice", ("data",), ("a", "b", "c"),
                              "slice_param {\n  slice_point: 1\n}"), "a")),
    ("sl", _net_on(layer_text("sl", "Slice", ("data",), ("a", "b", "c"),
                              "slice_param {\n  slice_point: 2\n  slice_point: 1\n}"), "a")),
    ("conv", _net_on(layer_text("conv", "Convolution", ("data",), ("conv",),
                                "convolution_param {\n  num_output: 2\n  kernel_size: 3\n"
                                "  kernel_h: 2\n  kernel_w: 2\n}"), "conv")),
    ("conv", _net_on(layer_text("conv", "Convolution", ("data",), ("conv",),
                                "convolution_param {\n  num_output: 2\n  kernel_size: 3\n"
                                "  dilation: 0\n}"), "conv")),
    ("dc", _net_on(layer_text("dc", "Deconvolution", ("data",), ("dc",),
                              "convolution_param {\n  num_output: 2\n}"), "dc")),
    ("pool", _net_on(layer_text("pool", "Pooling", ("data",), ("pool",),
                                "pooling_param {\n  global_pooling: true\n  kernel_size: 2\n}"),
                     "pool")),
    ("pool", _net_on(layer_text("pool", "Pooling", ("data",), ("pool",),
                                "pooling_param {\n  pool: STOCHASTIC\n  kernel_size: 2\n}"),
                     "pool")),
    ("lrn", _net_on(layer_text("lrn", "LRN", ("data",), ("lrn",),
                               "lrn_param {\n  local_size: 4\n}"), "lrn")),
    ("tile", _net_on(layer_text("tile", "Tile", ("data",), ("tile",),
                                "tile_param {\n  tiles: 0\n}"), "tile")),
    ("crop", _net_on(_dd("d2", "o", 2, 3, 3, 3) + layer_text(
        "crop", "Crop", ("data", "o"), ("crop",),
        "crop_param {\n  axis: 2\n  offset: 1\n  offset: 1\n  offset: 1\n}"), "crop")),
    ("am", _net_on(layer_text("am", "ArgMax", ("data",), ("am",),
                              "argmax_param {\n  top_k: 500\n  axis: 1\n}"), "am")),
    ("lg", _net_on(layer_text("lg", "Log", ("data",), ("lg",), "log_param {\n  base: -3\n}"),
                   "lg")),
    ("spp", _net_on(layer_text("spp", "SPP", ("data",), ("spp",),
                               "spp_param {\n  pyramid_height: 0\n}"), "spp")),
    ("in", 'name: "l"\n' + layer_text("in", "Input", (), ("a", "b", "c"),
                                      "input_param {\n  shape {\n    dim: 2\n  }\n"
                                      "  shape {\n    dim: 3\n  }\n}")),
    ("dd", 'name: "l"\n' + layer_text("dd", "DummyData", (), ("a", "b", "c"),
                                      "dummy_data_param {\n  shape {\n    dim: 2\n  }\n"
                                      "  shape {\n    dim: 3\n  }\n}")),
    ("br", 'name: "l"\n' + dummy_data(2, 3, 0, 0, 7)
     + layer_text("br", "BatchReindex", ("data", "label"), ("br",))),
    ("emb", 'name: "l"\n' + dummy_data(2, 3, 0, 0, 7)
     + layer_text("emb", "Embed", ("label",), ("emb",),
                  "embed_param {\n  num_output: 2\n  input_dim: 3\n}")),
    ("pr", 'name: "l"\n' + dummy_data(2, 3, 0, 0)
     + layer_text("pr", "PReLU", ("label",), ("pr",))),
    ("sc", _net_on(_dd("d2", "o", 7) + layer_text("sc", "Scale", ("data", "o"), ("sc",)), "sc")),
    ("bi", _net_on(layer_text("bi", "Bias", ("data",), ("bi",), "bias_param {\n  axis: 9\n}"),
                   "bi")),
    ("fi", _net_on(_dd("d2", "o", 5) + layer_text("fi", "Filter", ("data", "o"), ("fi",)), "fi")),
    ("lstm", 'name: "l"\n' + dummy_data(2, 3, 0, 0) + layer_text(
        "lstm", "LSTM", ("data",), ("lstm",), "recurrent_param {\n  num_output: 2\n}")),
    ("rnn", 'name: "l"\n' + dummy_data(2, 3, 0, 0) + _dd("d2", "cont", 3, 2) + layer_text(
        "rnn", "RNN", ("data", "cont"), ("rnn",), "recurrent_param {\n  num_output: 2\n}")),
    ("md", 'name: "l"\n' + layer_text("md", "MemoryData", (), ("a", "b"),
                                      "memory_data_param {\n  batch_size: 0\n  channels: 1\n"
                                      "  height: 1\n  width: 1\n}")),
    ("ho", _net_on(layer_text("ho", "HDF5Output", ("data", "label"), ()), "data")),
    ("rd", _net_on(layer_text("rd", "Reduction", ("data",), ("rd",),
                              "reduction_param {\n  axis: -7\n}"), "rd")),
    ("pa", 'name: "l"\n' + layer_text("pa", "Parameter", (), ("p",),
                                      "parameter_param {\n  shape {\n    dim: -4\n  }\n}")),
    ("ic", _net_on(layer_text("ic", "Im2col", ("data",), ("ic",),
                              "convolution_param {\n  kernel_size: 9\n}"), "ic")),
    ("sm", _net_on(layer_text("sm", "Softmax", ("data",), ("sm", "sm2")), "sm")),
    ("dr", _net_on(layer_text("dr", "Dropout", ("data", "label"), ("dr",)), "dr")),
    ("cat", _net_on(layer_text("cat", "Concat", (), ("cat",)), "data")),
    ("si", _net_on(layer_text("si", "Silence", ("data",), ("x",)), "data")),
    ("cl", _net_on(layer_text("cl", "Clip", ("data",), ("cl",),
                              "clip_param {\n  min: 2\n  max: -2\n}"), "cl")),
    ("conv", _filler("uniform", "    min: 2\n    max: 1\n")),
    ("conv", _filler("bilinear").replace("kernel_size: 3", "kernel_h: 2\n  kernel_w: 3")),
    ("conv", _filler("xavier", "    sparse: 3\n")),
    ("conv", _filler("unheard_of")),
    ("conv", _filler("gaussian", "    std: -0.5\n")),
    ("ct", _head(1, 3, _dd("d2", "other", 2, 5) + layer_text(
        "ct", "ContrastiveLoss", ("ip", "other", "label"), ("l",)))),
    ("wd", 'name: "l"\n' + layer_text("wd", "WindowData", (), ("a", "b"),
                                      'window_data_param {\n  source: "nowin.txt"\n'
                                      '  batch_size: 1\n}\ntransform_param {\n'
                                      '  crop_size: 4\n}')),
    ("bn", _net_on(layer_text("bn", "BatchNorm", ("data",), ("bn",),
                              "batch_norm_param {\n  moving_average_fraction: 0.9\n}\n"
                              "param {\n  lr_mult: 0\n}\nparam {\n  lr_mult: 0\n}\n"
                              "param {\n  lr_mult: 0\n}\nparam {\n  lr_mult: 0\n}"), "bn")),
]

LAYER_VALID = [
    _head(1, 3, _dd("d2", "other", 2, 3) + layer_text(
        "ct", "ContrastiveLoss", ("ip", "other", "label"), ("l",))),
    'name: "l"\n' + dummy_data(2, 3, 0, 0) + _dd("d2", "cont", 2, 3) + layer_text(
        "rnn", "RNN", ("data", "cont"), ("rnn",),
        "recurrent_param {\n  num_output: 2\n  weight_filler {\n    type: \"gaussian\"\n"
        "    std: 0.1\n  }\n}"),
    _net_on(layer_text("th", "Threshold", ("data",), ("th",)), "th"),
    _net_on(layer_text("bn", "BatchNorm", ("data",), ("bn",),
                       "batch_norm_param {\n  use_global_stats: true\n}"), "bn"),
    'name: "l"\n' + layer_text("pa", "Parameter", (), ("p",),
                               "parameter_param {\n  shape {\n    dim: 4\n  }\n}"),
    _filler("gaussian", "    std: 0.1\n    sparse: 2\n"),
    _filler("positive_unitball"), _filler("msra"), _filler("bilinear"),
    _filler("xavier", "    variance_norm: AVERAGE\n"),
    _net_on(layer_text("sm", "Softmax", ("data",), ("data",)), "data"),
    _net_on(layer_text("dr", "Dropout", ("data",), ("data",),
                       "dropout_param {\n  dropout_ratio: 0\n}"), "data"),
    _net_on(layer_text("pool", "Pooling", ("data",), ("pool",),
                       "pooling_param {\n  pool: AVE\n  kernel_size: 3\n  stride: 2\n"
                       "  pad: 1\n}"), "pool"),
    _net_on(layer_text("pool", "Pooling", ("data",), ("pool",),
                       "pooling_param {\n  global_pooling: true\n}"), "pool"),
    _head(-1, 3, layer_text("loss", "SoftmaxWithLoss", ("ip", "label"), ("loss",),
                            "loss_param {\n  ignore_label: -1\n}")),
    _net_on(layer_text("conv", "Convolution", ("data",), ("conv",),
                       "convolution_param {\n  num_output: 3\n  kernel_size: 2\n  group: 3\n"
                       "  dilation: 2\n  weight_filler {\n    type: \"xavier\"\n  }\n}"), "conv"),
    _net_on(layer_text("dc", "Deconvolution", ("data",), ("dc",),
                       "convolution_param {\n  num_output: 3\n  kernel_size: 4\n  stride: 2\n"
                       "  group: 3\n  weight_filler {\n    type: \"bilinear\"\n  }\n}"), "dc"),
]


def _conv_out(size, k, p, s):
    """Caffe's convolution output size: C++ integer division truncates toward zero."""
    return int((size + 2 * p - k) / float(s)) + 1


def _pool_out(size, k, p, s, any_pad):
    """Caffe's pooling output size: ceil, then one fewer when the last window would start in
    the padding (checked when any pad is set)."""
    o = int(math.ceil((size + 2 * p - k) / float(s))) + 1
    if any_pad and (o - 1) * s >= size + p:
        o -= 1
    return o


def _geometry(rng):
    """(h, w, kernel, pad, stride, pool kind or None, expected output (oh, ow) or None when
    Caffe refuses it). Pooling geometries with an empty window (Caffe's AVE gives 0/0 there)
    are drawn again."""
    while True:
        h, w = rng.randint(1, 9), rng.randint(1, 9)
        k = rng.randint(1, 11), rng.randint(1, 11)
        p = rng.randint(0, 4), rng.randint(0, 4)
        s = rng.randint(1, 4), rng.randint(1, 4)
        pool = rng.choice(["MAX", "AVE"]) if rng.random() < 0.5 else None
        if pool is None:
            out = (_conv_out(h, k[0], p[0], s[0]), _conv_out(w, k[1], p[1], s[1]))
            return h, w, k, p, s, pool, out if min(out) >= 1 else None
        if p[0] >= k[0] or p[1] >= k[1]:
            return h, w, k, p, s, pool, None
        out = (_pool_out(h, k[0], p[0], s[0], any(p)), _pool_out(w, k[1], p[1], s[1], any(p)))
        if min(out) < 1:
            return h, w, k, p, s, pool, None
        if (out[0] - 1) * s[0] - p[0] < h and (out[1] - 1) * s[1] - p[1] < w:
            return h, w, k, p, s, pool, out


def fam_geometry():
    """Random Convolution / Pooling geometry, with Caffe's output sizes (a window may reach
    past the padded input); pooling refuses pad >= kernel."""
    for i, slow in split(30, 30):
        rng = rng_for("net-geometry", i)
        h, w, k, p, s, pool, out = _geometry(rng)
        geo = ("  kernel_h: %d\n  kernel_w: %d\n  pad_h: %d\n  pad_w: %d\n  stride_h: %d\n"
               "  stride_w: %d\n" % (k + p + s))
        if pool:
            mid = layer_text("win", "Pooling", ("data",), ("win",),
                             "pooling_param {\n  pool: %s\n%s}" % (pool, geo))
        else:
            mid = layer_text("win", "Convolution", ("data",), ("win",),
                             "convolution_param {\n  num_output: 2\n%s  weight_filler {\n"
                             "    type: \"gaussian\"\n    std: 0.1\n  }\n}" % geo)
        text = ('name: "g"\n' + dummy_data(2, 2, h, w) + mid + ip_text("ip", "win", "ip", 2)
                + loss_text("ip"))

        def build(d, text=text):
            write(d, "net.prototxt", text)

        def run(d, out=out):
            import caffepy
            caffepy.set_random_seed(1701)
            net = caffepy.Net(os.path.join(d, "net.prototxt"), caffepy.TRAIN)
            try:
                shape = tuple(net.blobs["win"].data.shape)
                if shape[2:] != out:
                    raise AssertionError("output %s, Caffe's is %s" % (shape[2:], out))
                return check_loss(net_results(net))
            finally:
                net.close()
        add("net-geometry", i, "net", out is not None, build, run,
            () if out is not None else ("win",), slow=slow)


def fam_zero_size():
    """Blobs with a zero dimension: Caffe fills nothing and a layer on zero input features
    gives its bias."""
    ip = ('name: "z"\n' + dummy_data(2, 0, 0, 0) + ip_text("ip", "data", "ip", 3)
          + loss_text("ip"))
    conv = ('name: "z"\n' + dummy_data(2, 0, 5, 5) + layer_text(
        "conv", "Convolution", ("data",), ("conv",),
        "convolution_param {\n  num_output: 3\n  kernel_size: 3\n  weight_filler {\n"
        "    type: \"xavier\"\n  }\n  bias_filler {\n    type: \"constant\"\n"
        "    value: 0.5\n  }\n}") + ip_text("ip", "conv", "ip", 2) + loss_text("ip"))
    for i, text in enumerate((ip, conv)):
        def build(d, text=text):
            write(d, "net.prototxt", text)

        def run(d, i=i):
            import caffepy
            import numpy as np
            caffepy.set_random_seed(1701)
            net = caffepy.Net(os.path.join(d, "net.prototxt"), caffepy.TRAIN)
            try:
                res = check_loss(net_results(net))
                top = host(net.blobs["ip" if i == 0 else "conv"].data)
                bias = host(net.params["ip" if i == 0 else "conv"][1].data)
                want = np.broadcast_to(bias.reshape((1, -1) + (1,) * (top.ndim - 2)), top.shape)
                if not np.array_equal(top, want):
                    raise AssertionError("a layer on zero input features gives %s, not its "
                                         "bias %s" % (top.ravel()[:6], bias))
                return {k: v for k, v in res.items() if v.size}    # the weights are empty
            finally:
                net.close()
        add("net-zero-size", i, "net", True, build, run)


def _recurrent(typ, bottoms, extra="", rp="num_output: 3", x=(3, 2, 4)):
    return ('name: "r"\n' + _dd("x", "x", *x) + extra + layer_text(
        "rec", typ, bottoms, ("h",), "recurrent_param {\n  %s\n  weight_filler {\n"
        "    type: \"gaussian\"\n    std: 0.1\n  }\n}" % rp))


LAYER_CONFIG += [
    ("rec", _recurrent("LSTM", ("x", "c"), _dd("c", "c", 3, 5))),
    ("rec", _recurrent("RNN", ("x", "c"), _dd("c", "c", 3))),
    ("rec", _recurrent("LSTM", ("x", "c", "s"), _dd("c", "c", 3, 2) + _dd("s", "s", 5, 7))),
    ("rec", _recurrent("LSTM", ("x", "c"), _dd("c", "c", 3, 2), "num_output: 0")),
    ("rec", _recurrent("LSTM", ("x", "c", "h0"), _dd("c", "c", 3, 2) + _dd("h0", "h0", 1, 2, 3),
                       "num_output: 3\n  expose_hidden: true")),
    ("u", 'name: "r"\n' + _dd("c0", "c0", 1, 2, 3) + _dd("xx", "xx", 1, 2, 5)
     + _dd("cc", "cc", 1, 2) + layer_text("u", "LSTMUnit", ("c0", "xx", "cc"), ("c", "h"))),
]
LAYER_VALID += [
    _recurrent("LSTM", ("x", "c"), _dd("c", "c", 3, 2)),
    _recurrent("RNN", ("x", "c", "s"), _dd("c", "c", 3, 2) + _dd("s", "s", 2, 5)),
    _recurrent("LSTM", ("x", "c"), _dd("c", "c", 3, 2), x=(3, 2)),
]


def fam_layer_config():
    for i, slow in split(len(LAYER_CONFIG), 0):
        name, text = LAYER_CONFIG[i]
        _net_case("net-layer-config", i, slow, text, (name,))
    for i, slow in split(len(LAYER_VALID), 0):
        def build(d, text=LAYER_VALID[i]):
            write(d, "net.prototxt", text)

        def run(d):
            return run_net(os.path.join(d, "net.prototxt"))
        add("net-layer-valid", i, "net", True, build, run)


# -- solver prototxt ------------------------------------------------------------------------

POLICIES = [
    'lr_policy: "fixed"\n', 'lr_policy: "step"\ngamma: 0.5\nstepsize: 1\n',
    'lr_policy: "exp"\ngamma: 0.9\n', 'lr_policy: "inv"\ngamma: 0.1\npower: 0.75\n',
    'lr_policy: "multistep"\ngamma: 0.5\nstepvalue: 1\nstepvalue: 3\n',
    'lr_policy: "poly"\npower: 2\n', 'lr_policy: "sigmoid"\ngamma: 0.1\nstepsize: 2\n',
]
TYPES = ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"]


def _solver_case(family, i, slow, valid, make_text, names=(), net_text=None, iters=2):
    """make_text(net path, d) -> solver text."""
    def build(d):
        np_ = write(d, "snet.prototxt", net_text or BASE_NET)
        write(d, "solver.prototxt", make_text(np_, d))

    def run(d):
        return check_loss(run_solver(os.path.join(d, "solver.prototxt"), iters),
                          "smoothed_loss")
    add(family, i, "solver", valid, build, run, names, slow=slow)


def fam_solver():
    for i, slow in split(20, 20):
        rng = rng_for("solver-valid", i)
        type_ = TYPES[i % len(TYPES)]
        policy = rng.choice(POLICIES)
        extra = ""
        if rng.random() < 0.3:
            extra += "iter_size: 2\n"
        if rng.random() < 0.3:
            extra += "clip_gradients: 0.5\n"
        if rng.random() < 0.3:
            extra += 'regularization_type: "L1"\n'
        if rng.random() < 0.3:
            extra += "average_loss: 3\n"
        if type_ == "Adam":
            extra += "momentum2: 0.999\ndelta: 1e-8\n"
        if type_ == "RMSProp":
            extra += "rms_decay: 0.9\n"
        net_text, _ = random_net(rng)
        mom = type_ not in ("AdaGrad", "RMSProp")

        def make_text(np_, d, extra=extra, type_=type_, policy=policy, mom=mom):
            t = solver_text(np_, d, extra, type_, policy)
            return t if mom else t.replace("momentum: 0.9\n", "")
        _solver_case("solver-valid", i, slow, True, make_text, net_text=net_text,
                     iters=rng.randint(1, 3))

    # with test nets (solver.test_nets run through test_all)
    for i, slow in split(3, 0):
        def make_text(np_, d, i=i):
            return solver_text(np_, d, "test_iter: 2\ntest_interval: 1\ntest_initialization: %s\n"
                               % ("true" if i else "false"))
        _solver_case("solver-valid-test", i, slow, True, make_text)

    invalid = [
        (lambda n, d: solver_text(n, d, type_="Sgdx"), ("Sgdx",)),
        (lambda n, d: solver_text(n, d, type_="Quantum"), ("Quantum",)),
        (lambda n, d: solver_text(n, d, policy='lr_policy: "sawtooth"\n'), ("sawtooth",)),
        (lambda n, d: solver_text(n, d).replace('net: "%s"\n' % n, ""), ("net",)),
        (lambda n, d: solver_text(os.path.join(d, "no_such_net.prototxt"), d),
         ("no_such_net.prototxt",)),
        (lambda n, d: solver_text(n, d, 'train_net: "%s"\n' % n), ("train_net",)),
        (lambda n, d: solver_text(n, d, "iter_size: 0\n"), ("iter_size",)),
        (lambda n, d: solver_text(n, d, "average_loss: 0\n"), ("average_loss",)),
        (lambda n, d: solver_text(n, d, 'regularization_type: "L3"\n'), ("L3",)),
        (lambda n, d: solver_text(n, d).replace("base_lr: 0.01", "base_lr: \"fast\""),
         ("solver.prototxt:2",)),
        (lambda n, d: solver_text(n, d).replace("max_iter: 100", "max_iter: 1.5"),
         ("solver.prototxt:6",)),
        (lambda n, d: solver_text(n, d).replace("momentum: 0.9", "momentun: 0.9"),
         ("solver.prototxt:3", "momentun")),
        (lambda n, d: solver_text(n, d, "solver_type: WARP\n"), ("solver.prototxt:",)),
        (lambda n, d: solver_text(n, d).replace("display: 0", "display: 0\ndisplay: 1"),
         ("solver.prototxt:8", "display")),
        (lambda n, d: solver_text(n, d, 'test_net: "%s"\n' % n), ("test_iter",)),
        (lambda n, d: solver_text(n, d, 'test_iter: 1\ntest_interval: 1\ntest_net: "%s"\n'
                                  % os.path.join(d, "gone_test.prototxt")),
         ("gone_test.prototxt",)),
        (lambda n, d: solver_text(n, d).replace(
            'snapshot: 0\nsnapshot_prefix: "%s"' % os.path.join(d, "snap"),
            'snapshot: 1\nsnapshot_prefix: "%s"' % os.path.join(d, "nodir", "sub", "snap")),
         ("nodir",)),
        (lambda n, d: solver_text(n, d, 'type: "Adam"\n'), ("solver.prototxt:", "type")),
        (lambda n, d: solver_text(n, d, "weights: \"%s\"\n"
                                  % os.path.join(d, "no_weights.caffemodel")),
         ("no_weights.caffemodel",)),
        (lambda n, d: solver_text(n, d, "snapshot_format: PNG\n"), ("solver.prototxt:",)),
    ]
    for i, slow in split(len(invalid), 0):
        make_text, names = invalid[i]
        _solver_case("solver-invalid", i, slow, False, make_text, names)

    # learning-rate policies and update rules Caffe checks, and solver files it accepts
    more_invalid = [
        (lambda n, d: solver_text(n, d, policy='lr_policy: "step"\ngamma: 0.5\n'),
         ("stepsize",)),
        (lambda n, d: solver_text(n, d, policy='lr_policy: "exp"\ngamma: -1\n'), ("gamma",)),
        (lambda n, d: solver_text(n, d, policy='lr_policy: "sigmoid"\ngamma: 0.1\n'),
         ("stepsize",)),
        (lambda n, d: solver_text(n, d, "rms_decay: 2\n", type_="RMSProp").replace(
            "momentum: 0.9\n", ""), ("rms_decay",)),
        (lambda n, d: solver_text(n, d, type_="AdaGrad"), ("AdaGrad", "omentum")),
        (lambda n, d: "", ("lr_policy",)),
        (lambda n, d: solver_text(n, d).replace('net: "%s"\n' % n, 'net_param {\n%s}\n' % (
            BASE_NET.replace('bottom: "ip1"', 'bottom: "zz"', 1))), ("zz", "relu1")),
        (lambda n, d: solver_text(n, d, type_="sgd"), ("sgd",)),
        (lambda n, d: solver_text(n, d, 'regularization_type: "l1"\n'), ("l1",)),
        (lambda n, d: solver_text(n, d, "average_loss: -3\n"), ("average_loss",)),
        (lambda n, d: os.makedirs(os.path.join(d, "wdir.caffemodel")) or solver_text(
            n, d, 'weights: "%s"\n' % os.path.join(d, "wdir.caffemodel")), ("wdir.caffemodel",)),
    ]
    for i, slow in split(len(more_invalid), 0):
        make_text, names = more_invalid[i]
        _solver_case("solver-invalid-rule", i, slow, False, make_text, names)
    more_valid = [
        lambda n, d: solver_text(n, d).replace('net: "%s"\n' % n, 'net_param {\n%s}\n'
                                               % BASE_NET),
        lambda n, d: solver_text(n, d, policy='lr_policy: "multistep"\ngamma: 0.5\n'),
        lambda n, d: solver_text(n, d, 'train_state {\n  stage: "foo"\n  level: 2\n}\n'),
        lambda n, d: solver_text(n, d, "debug_info: true\nsnapshot_diff: true\n"),
        lambda n, d: solver_text(n, d, "test_iter: 1\ntest_iter: 2\ntest_interval: 1\n"
                                 'test_net: "%s"\ntest_net: "%s"\n' % (n, n)).replace(
                                     'net: "%s"\n' % n, 'train_net: "%s"\n' % n, 1),
        lambda n, d: solver_text(n, d, "momentum2: 0.99\n", type_="Adam"),
        lambda n, d: solver_text(n, d, "delta: 0.001\n", type_="AdaDelta"),
        lambda n, d: solver_text(n, d, policy='lr_policy: "multistep"\ngamma: 0.5\n'
                                 "stepvalue: 5\nstepvalue: 1\n"),
        lambda n, d: solver_text(n, d, "clip_gradients: 0.001\niter_size: 3\n"),
        lambda n, d: solver_text(n, d, 'regularization_type: "L1"\n', type_="Nesterov"),
    ]
    for i, slow in split(len(more_valid), 0):
        _solver_case("solver-valid-more", i, slow, True, more_valid[i], iters=3)

    # nets a solver trains though they are unusual: no loss, frozen params, a TEST-only
    # Accuracy, a param shared by two layers (with test nets and test_compute_loss)
    odd_nets = [
        'name: "n"\n' + dummy_data(2, 3, 0, 0) + ip_text("ip", "data", "ip", 2),
        BASE_NET.replace("inner_product_param", "param {\n  lr_mult: 0\n}\nparam {\n"
                         "  lr_mult: 0\n}\ninner_product_param"),
        BASE_NET + layer_text("acc", "Accuracy", ("ip2", "label"), ("acc",),
                              "include {\n  phase: TEST\n}"),
        'name: "sh"\n' + dummy_data(2, 3, 0, 0) + "".join(
            ip_text(n, b, n, 3).replace("inner_product_param",
                                        'param {\n  name: "w"\n}\ninner_product_param')
            for n, b in (("a", "data"), ("b", "a"))) + loss_text("b"),
    ]
    for i, net_text in enumerate(odd_nets):
        _solver_case("solver-valid-nets", i, False, True, lambda n, d: solver_text(
            n, d, "test_iter: 2\ntest_interval: 1\ntest_compute_loss: true\n"),
            net_text=net_text)

    # structured sparsity (the SSL fields) and regularizer { } blocks
    ssl_net = ('name: "s"\n' + dummy_data(2, 4, 6, 6) + layer_text(
        "conv", "Convolution", ("data",), ("conv",),
        "param {\n  %s\n}\nconvolution_param {\n  num_output: 6\n  kernel_size: 3\n"
        "  group: 2\n  weight_filler {\n    type: \"gaussian\"\n    std: 0.1\n  }\n}")
        + ip_text("ip", "conv", "ip", 3) + loss_text("ip"))
    ssl = [
        (False, "block_group_lasso {\n    xdimen: 5\n    ydimen: 4\n  }",
         "block_group_decay: 0.01\n", ("conv", "xdimen 5")),
        (False, "block_group_lasso {\n    xdimen: 0\n    ydimen: 4\n  }",
         "block_group_decay: 0.01\n", ("conv", "xdimen 0")),
        (False, 'decay_proto: "{d}/no_decay.binaryproto"', "", ("conv", "no_decay.binaryproto")),
        (False, 'decay_proto: "{d}/short_decay.binaryproto"', "",
         ("conv", "short_decay.binaryproto")),
        (False, 'regularization_type: "L7"', "", ("conv", "L7")),
        (False, "lr_mult: 1", 'regularizer {\n  type: "Nope"\n  coeff: 0.1\n}\n', ("Nope",)),
        (False, "lr_mult: 1", 'regularizer {\n  type: "no_such_mod:Cls"\n  coeff: 0.1\n}\n',
         ("no_such_mod",)),
        (True, "breadth_decay_mult: 1\n  kernel_shape_decay_mult: 1\n  block_group_lasso {\n"
         "    xdimen: 3\n    ydimen: 2\n  }", "breadth_decay: 0.01\nkernel_shape_decay: 0.01\n"
         "block_group_decay: 0.01\ndisplay_sparsity: true\n", ()),
        (True, "lr_mult: 1", 'regularizer {\n  type: "L1"\n  coeff: 0.1\n}\n', ()),
        (True, "lr_mult: 1", "zerout_threshold: 0.0001\n", ()),
        (True, 'decay_proto: "{d}/good_decay.binaryproto"\n  regularization_type: "L1"', "", ()),
    ]
    for i, (valid, pspec, extra, names) in enumerate(ssl):
        def make_text(n, d, pspec=pspec, extra=extra):
            from caffepy.proto import caffe_pb2
            for name, dims in (("short_decay", [5]), ("good_decay", [6, 2, 3, 3])):
                bp = caffe_pb2.BlobProto()
                bp.shape.dim.extend(dims)
                bp.data.extend([0.5] * int(math.prod(dims)))
                write(d, name + ".binaryproto", bp.SerializeToString())
            n = write(d, "ssl.prototxt", ssl_net % pspec.replace("{d}", d))
            return solver_text(n, d, extra)
        _solver_case("solver-ssl", i, False, valid, make_text, names)

    # a net file the solver names that is broken: its own file and line
    for i, slow in split(3, 0):
        broken = [BASE_NET.replace("num_output: 4", "num_outptu: 4"),
                  BASE_NET.replace('bottom: "ip1"\n  top: "ip2"', 'bottom: "nope"\n  top: "ip2"'),
                  BASE_NET[:200]][i]
        names = [("snet.prototxt:%d" % line_of(BASE_NET, "num_output: 4"), "num_outptu"),
                 ("nope", "ip2"), ("snet.prototxt",)][i]
        _solver_case("solver-bad-net", i, slow, False, lambda n, d: solver_text(n, d), names,
                     net_text=broken)

    # truncated / non-UTF-8 solver files
    for i, slow in split(6, 6):
        def make_text(n, d, rng_seed=i):
            r = rng_for("solver-corrupt-text", rng_seed)
            t = solver_text(n, d).encode()
            if rng_seed % 2:
                pos = r.randint(0, len(t))
                return (t[:pos] + b"\xff\xfe" + t[pos:])
            # cut inside a quoted string: the quote never closes
            q = [k for k in range(len(t)) if t[k:k + 1] == b'"']
            s = r.choice(q[::2])
            return t[:r.randint(s + 1, s + 3)]

        def build(d, make_text=make_text):
            np_ = write(d, "snet.prototxt", BASE_NET)
            write(d, "solver.prototxt", make_text(np_, d))

        def run(d):
            return run_solver(os.path.join(d, "solver.prototxt"))
        add("solver-corrupt", i, "solver", False, build, run, ("solver.prototxt",), slow=slow)

    # missing solver file
    def build(d):
        pass

    def run(d):
        return run_solver(os.path.join(d, "gone_solver.prototxt"))
    add("solver-missing-file", 0, "solver", False, build, run, ("gone_solver.prototxt",))


# -- weights: binary .caffemodel -------------------------------------------------------------

def _mutate_model(path, fn):
    """Rewrite the .caffemodel at ``path`` through fn(NetParameter)."""
    from caffepy.proto import caffe_pb2
    p = caffe_pb2.NetParameter.FromString(open(path, "rb").read())
    fn(p)
    with open(path, "wb") as f:
        f.write(p.SerializeToString())


def _top_level_boundaries(data):
    """Offsets of the top-level field boundaries of a serialized message."""
    out, pos = [0], 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        wt = key & 7
        if wt == 0:
            _, pos = _varint(data, pos)
        elif wt == 2:
            n, pos = _varint(data, pos)
            pos += n
        elif wt == 5:
            pos += 4
        elif wt == 1:
            pos += 8
        out.append(pos)
    return out


def _varint(data, pos):
    v = shift = 0
    while True:
        b = data[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, pos


def corrupt_h5_signature(data, r):
    """Overwrite one of the signatures of an HDF5 file's group structures (local heap, symbol
    table node, B-tree node), which HDF5 checks when it reads them."""
    spots = [k for sig in (b"HEAP", b"SNOD", b"TREE") for k in _find_all(data, sig)]
    k = r.choice(sorted(spots))
    data[k:k + 4] = bytes(r.randrange(65, 91) for _ in range(4))


def _find_all(data, sub):
    k = data.find(sub)
    while k >= 0:
        yield k
        k = data.find(sub, k + 1)


def _parses_as(data, message_name):
    from caffepy.proto import caffe_pb2
    try:
        getattr(caffe_pb2, message_name).FromString(data)
        return True
    except Exception:
        return False


def fam_weights():
    # intact, through both entry points, several seeds and nets
    for i, slow in split(8, 8):
        rng = rng_for("weights-valid", i)
        text, _ = random_net(rng)
        via = ["copy_from", "weights"][i % 2]
        h5 = i % 4 >= 2

        def build(d, text=text, h5=h5):
            make_weights(d, text=text, model="w.caffemodel" + (".h5" if h5 else ""), h5=h5)

        def run(d, via=via, h5=h5):
            model = os.path.join(d, "w.caffemodel" + (".h5" if h5 else ""))
            return check_loss(run_copy_from(os.path.join(d, "w.prototxt"), model,
                                            expect=saved_params(model), via=via))
        add("weights-valid", i, "weights", True, build, run, slow=slow)

    # a file with layers the net lacks, and a net with layers the file lacks
    def build_extra(d):
        bigger = BASE_NET.replace(loss_text("ip2"), ip_text("ip3", "ip2", "ip3", 2)
                                  + loss_text("ip3"))
        make_weights(d, net_name="big.prototxt", text=bigger)
        write(d, "w.prototxt", BASE_NET)

    def run_extra(d):
        model = os.path.join(d, "w.caffemodel")
        exp = {k: v for k, v in saved_params(model).items() if not k.startswith("ip3")}
        return check_loss(run_copy_from(os.path.join(d, "w.prototxt"), model, expect=exp))
    add("weights-valid-extra", 0, "weights", True, build_extra, run_extra)

    def build_fewer(d):
        make_weights(d)
        _mutate_model(os.path.join(d, "w.caffemodel"),
                      lambda p: p.layer.remove([lp for lp in p.layer if lp.name == "ip2"][0]))

    def run_fewer(d):
        model = os.path.join(d, "w.caffemodel")
        return check_loss(run_copy_from(os.path.join(d, "w.prototxt"), model,
                                        expect=saved_params(model)))
    add("weights-valid-fewer", 0, "weights", True, build_fewer, run_fewer)

    # legacy 4-D blob dims and double_data
    for i, slow in split(2, 0):
        def build(d, i=i):
            make_weights(d)

            def fn(p):
                for lp in p.layer:
                    for b in lp.blobs:
                        dims = list(b.shape.dim)
                        if i == 0:
                            b.ClearField("shape")
                            dims = [1] * (4 - len(dims)) + dims
                            b.num, b.channels, b.height, b.width = dims
                        else:
                            vals = list(b.data)
                            b.ClearField("data")
                            b.double_data.extend(vals)
            _mutate_model(os.path.join(d, "w.caffemodel"), fn)

        def run(d):
            from caffepy.proto import caffe_pb2
            import numpy as np
            model = os.path.join(d, "w.caffemodel")
            p = caffe_pb2.NetParameter.FromString(open(model, "rb").read())
            import caffepy
            net = caffepy.Net(os.path.join(d, "w.prototxt"), caffepy.TRAIN)
            exp = {}
            for lp in p.layer:
                for j, b in enumerate(lp.blobs):
                    vals = b.double_data if len(b.double_data) else b.data
                    exp["%s/%d" % (lp.name, j)] = np.asarray(vals, np.float32).reshape(
                        net.params[lp.name][j].data.shape)
            net.close()
            return check_loss(run_copy_from(os.path.join(d, "w.prototxt"), model, expect=exp))
        add("weights-valid-legacy", i, "weights", True, build, run)

    # truncated inside a layer (never at a top-level field boundary, which would parse)
    for i, slow in split(8, 8):
        via = ["copy_from", "weights"][i % 2]

        def build(d, seed=i):
            r = rng_for("weights-truncated-cut", seed)
            _, model = make_weights(d, seed=seed)
            data = open(model, "rb").read()
            bounds = set(_top_level_boundaries(data))
            while True:
                cut = r.randint(1, len(data) - 1)
                if cut not in bounds:
                    break
            write(d, "w.caffemodel", data[:cut])

        def run(d, via=via):
            return run_copy_from(os.path.join(d, "w.prototxt"),
                                 os.path.join(d, "w.caffemodel"), via=via)
        add("weights-truncated", i, "weights", False, build, run, ("w.caffemodel",), slow=slow)

    # random bytes (chosen so that protobuf itself rejects them)
    for i, slow in split(6, 6):
        def build(d, seed=i):
            r = rng_for("weights-random", seed)
            write(d, "w.prototxt", BASE_NET)
            while True:
                data = bytes(r.randrange(256) for _ in range(r.randint(1, 3000)))
                if not _parses_as(data, "NetParameter"):
                    break
            write(d, "w.caffemodel", data)

        def run(d, via=["copy_from", "weights"][i % 2]):
            return run_copy_from(os.path.join(d, "w.prototxt"),
                                 os.path.join(d, "w.caffemodel"), via=via)
        add("weights-random", i, "weights", False, build, run, ("w.caffemodel",), slow=slow)

    # valid proto, wrong content
    def drop_blob(layer, j):
        def fn(p):
            lp = [x for x in p.layer if x.name == layer][0]
            del lp.blobs[j]
        return fn

    def add_blob(layer):
        def fn(p):
            lp = [x for x in p.layer if x.name == layer][0]
            lp.blobs.add().CopyFrom(lp.blobs[-1])
        return fn

    def reshape_blob(layer, j, dims):
        def fn(p):
            b = [x for x in p.layer if x.name == layer][0].blobs[j]
            b.shape.ClearField("dim")
            b.shape.dim.extend(dims)
        return fn

    def cut_data(layer, j, keep):
        def fn(p):
            b = [x for x in p.layer if x.name == layer][0].blobs[j]
            vals = list(b.data)[:keep]
            b.ClearField("data")
            b.data.extend(vals)
        return fn

    def more_data(layer, j):
        def fn(p):
            b = [x for x in p.layer if x.name == layer][0].blobs[j]
            b.data.extend([0.5, 0.25])
        return fn

    def no_shape(layer, j):
        def fn(p):
            b = [x for x in p.layer if x.name == layer][0].blobs[j]
            b.ClearField("shape")
        return fn

    content = [
        (drop_blob("ip1", 1), ("ip1",)), (drop_blob("ip2", 0), ("ip2",)),
        (add_blob("ip1"), ("ip1",)), (add_blob("ip2"), ("ip2",)),
        (reshape_blob("ip1", 0, [4, 2]), ("ip1",)), (reshape_blob("ip2", 0, [3, 5]), ("ip2",)),
        (reshape_blob("ip1", 1, [5]), ("ip1",)), (reshape_blob("ip1", 0, [3, 4]), ("ip1",)),
        (reshape_blob("ip2", 1, [1, 3]), ("ip2",)),
        (cut_data("ip1", 0, 5), ("ip1",)), (cut_data("ip2", 1, 0), ("ip2",)),
        (more_data("ip1", 0), ("ip1",)), (no_shape("ip2", 0), ("ip2",)),
        (lambda p: [p.layer[1].blobs[0].data.__setitem__(0, 1.0),
                    p.layer[1].blobs[0].double_data.extend([1.0] * 2)], ("ip1",)),
    ]
    for i, slow in split(len(content), 0):
        fn, names = content[i]
        via = ["copy_from", "weights"][i % 2]

        def build(d, fn=fn):
            _, model = make_weights(d)
            _mutate_model(model, fn)

        def run(d, via=via):
            return run_copy_from(os.path.join(d, "w.prototxt"),
                                 os.path.join(d, "w.caffemodel"), via=via)
        add("weights-content", i, "weights", False, build, run, names + ("w.caffemodel",))

    # every layer renamed (a model of another net): binary and HDF5
    def rename_all(d, h5):
        _, model = make_weights(d, model="w.caffemodel" + (".h5" if h5 else ""), h5=h5)
        if h5:
            import h5py
            with h5py.File(model, "a") as f:
                for k in list(f["data"]):
                    f["data"].move(k, "other_" + k)
        else:
            _mutate_model(model, lambda p: [setattr(lp, "name", "other_" + lp.name)
                                            for lp in p.layer])
    for i in range(4):
        h5 = i >= 2
        model = "w.caffemodel" + (".h5" if h5 else "")
        add("weights-renamed", i, "weights", False, lambda d, h5=h5: rename_all(d, h5),
            lambda d, model=model, via=["copy_from", "weights"][i % 2]: run_copy_from(
                os.path.join(d, "w.prototxt"), os.path.join(d, model), via=via),
            (model, "ip1"))

    # saving into a folder that does not exist
    for i in range(2):
        def run(d, h5=i == 1):
            import caffepy
            net = caffepy.Net(os.path.join(d, "w.prototxt"), caffepy.TRAIN)
            if h5:
                net.save_hdf5(os.path.join(d, "nodir", "saved.caffemodel.h5"))
            else:
                net.save(os.path.join(d, "nodir", "saved.caffemodel"))
            return net_results(net)
        add("weights-save", i, "weights", False, lambda d: write(d, "w.prototxt", BASE_NET), run,
            ("saved.caffemodel",))

    # a prototxt, a folder, or nothing, where the weights should be
    for i, slow in split(3, 0):
        def build(d, i=i):
            write(d, "w.prototxt", BASE_NET)
            if i == 0:
                write(d, "w.caffemodel", BASE_NET)
            elif i == 1:
                os.makedirs(os.path.join(d, "w.caffemodel"))

        def run(d):
            return run_copy_from(os.path.join(d, "w.prototxt"),
                                 os.path.join(d, "w.caffemodel"))
        add("weights-odd-file", i, "weights", False, build, run, ("w.caffemodel",))

    # -- HDF5 --
    def h5_mutation(fn):
        def build(d):
            _, model = make_weights(d, model="w.caffemodel.h5", h5=True)
            import h5py
            with h5py.File(model, "a") as f:
                fn(f)
        return build

    def run_h5(d, via="copy_from"):
        return run_copy_from(os.path.join(d, "w.prototxt"), os.path.join(d, "w.caffemodel.h5"),
                             via=via)

    import_np = __import__("numpy")

    def replace(path, value):
        def fn(f):
            del f[path]
            f[path] = value
        return fn

    def h5_dtype(path, dtype):
        def fn(f):
            arr = import_np.asarray(f[path])
            del f[path]
            f.create_dataset(path, data=arr.astype(dtype))
        return fn

    def h5_group_instead(path):
        def fn(f):
            del f[path]
            f.create_group(path)
        return fn

    h5_invalid = [
        (lambda f: f.__delitem__("data"), ("w.caffemodel.h5", "data")),
        (lambda f: f.__delitem__("data/ip1/1"), ("w.caffemodel.h5", "ip1")),
        (lambda f: f.__delitem__("data/ip2/0"), ("w.caffemodel.h5", "ip2")),
        (replace("data/ip1/0", import_np.zeros((4, 2), "f4")), ("w.caffemodel.h5", "ip1")),
        (replace("data/ip2/1", import_np.zeros((1, 3), "f4")), ("w.caffemodel.h5", "ip2")),
        (replace("data/ip1/0", import_np.zeros((3, 4), "f4")), ("w.caffemodel.h5", "ip1")),
        (lambda f: f.create_dataset("data/ip1/2", data=import_np.zeros(3, "f4")),
         ("w.caffemodel.h5", "ip1")),
        (replace("data/ip1/0", import_np.array([[b"ab"] * 3] * 4)), ("w.caffemodel.h5", "ip1")),
        (h5_group_instead("data/ip2/0"), ("w.caffemodel.h5", "ip2")),
        (replace("data/ip2", import_np.zeros(3, "f4")), ("w.caffemodel.h5", "ip2")),
        (replace("data", import_np.zeros(3, "f4")), ("w.caffemodel.h5", "data")),
        (replace("data/ip1/0", import_np.float32(1.0)), ("w.caffemodel.h5", "ip1")),
    ]
    for i, slow in split(len(h5_invalid), 0):
        fn, names = h5_invalid[i]
        add("weights-h5-invalid", i, "weights", False, h5_mutation(fn),
            lambda d, v=["copy_from", "weights"][i % 2]: run_h5(d, v), names)

    # valid HDF5 variants: a missing layer group, float64 and float16 datasets
    h5_valid = [
        (lambda f: f.__delitem__("data/ip2"), None),
        (h5_dtype("data/ip1/0", "f8"), None), (h5_dtype("data/ip2/1", "f8"), None),
        (lambda f: f.create_group("data/not_a_layer"), None),
    ]
    for i, slow in split(len(h5_valid), 0):
        fn, _ = h5_valid[i]

        def run(d):
            model = os.path.join(d, "w.caffemodel.h5")
            return check_loss(run_copy_from(os.path.join(d, "w.prototxt"), model,
                                            expect=saved_params(model)))
        add("weights-h5-valid", i, "weights", True, h5_mutation(fn), run)

    # HDF5 files with a corrupt superblock, cut short, or with a group structure's signature
    # overwritten (raw dataset bytes could change unnoticed: HDF5 keeps no checksums there)
    for i, slow in split(3, 9):
        def build(d, seed=i):
            r = rng_for("weights-h5-corrupt", seed)
            _, model = make_weights(d, model="w.caffemodel.h5", h5=True)
            data = bytearray(open(model, "rb").read())
            mode = seed % 3
            if mode == 1:
                data = data[:r.randint(8, len(data) - 1)]
            elif mode == 2:
                corrupt_h5_signature(data, r)
            else:
                n = r.randint(16, 96)
                data[8:8 + n] = bytes(r.randrange(256) for _ in range(n))
            write(d, "w.caffemodel.h5", bytes(data))

        add("weights-h5-corrupt", i, "weights", False, build,
            lambda d, v=["copy_from", "weights"][i % 2]: run_h5(d, v), ("w.caffemodel.h5",),
            slow=slow, subprocess=True)


# -- solver states --------------------------------------------------------------------------

def fam_state():
    for i, slow in split(6, 6):
        h5 = i % 2 == 1
        type_ = TYPES[i % len(TYPES)]

        def build(d, h5=h5, type_=type_):
            _, _, state, hist = make_snapshot(d, h5, type_)
            import numpy as np
            np.savez(os.path.join(d, "hist.npz"), *hist)

        def run(d, h5=h5):
            import numpy as np
            state = os.path.join(d, "snap_iter_2.solverstate" + (".h5" if h5 else ""))
            z = np.load(os.path.join(d, "hist.npz"))
            hist = [z["arr_%d" % k] for k in range(len(z.files))]
            return check_loss(run_solver(os.path.join(d, "solver.prototxt"), 1, restore=state,
                                         expect_iter=2, expect_history=hist), "smoothed_loss")
        add("state-valid", i, "state", True, build, run, slow=slow)

    def state_case(family, i, h5, mutate, names, slow=False, subprocess=False, type_="SGD",
                   state_name=None):
        def build(d):
            _, model, state, _ = make_snapshot(d, h5, type_)
            mutate(d, model, state)

        def run(d):
            state = os.path.join(d, state_name or ("snap_iter_2.solverstate"
                                                   + (".h5" if h5 else "")))
            return run_solver(os.path.join(d, "solver.prototxt"), 1, restore=state)
        add(family, i, "state", False, build, run, names, slow=slow, subprocess=subprocess)

    def binary(fn):
        def mutate(d, model, state):
            from caffepy.proto import caffe_pb2
            s = caffe_pb2.SolverState.FromString(open(state, "rb").read())
            fn(s, d)
            open(state, "wb").write(s.SerializeToString())
        return mutate

    def resize_hist(k, dims):
        def fn(s, d):
            h = s.history[k]
            h.shape.ClearField("dim")
            h.shape.dim.extend(dims)
            n = 1
            for v in dims:
                n *= v
            h.ClearField("data")
            h.data.extend([0.0] * n)
        return fn

    def set_learned(name):
        def fn(s, d):
            s.learned_net = os.path.join(d, name) if name else ""
        return fn

    S = "snap_iter_2.solverstate"
    bin_invalid = [
        (binary(lambda s, d: s.history.__delitem__(0)), (S,)),
        (binary(lambda s, d: s.history.__delitem__(slice(0, 4))), (S,)),
        (binary(lambda s, d: s.history.add().CopyFrom(s.history[0])), (S,)),
        (binary(resize_hist(0, [5, 2])), (S,)),
        (binary(resize_hist(3, [7])), (S,)),
        (binary(set_learned("gone.caffemodel")), ("gone.caffemodel",)),
        (binary(lambda s, d: s.history[1].ClearField("data")), (S,)),
    ]
    for i, slow in split(len(bin_invalid), 0):
        fn, names = bin_invalid[i]
        state_case("state-binary-invalid", i, False, fn, names)

    # a learned_net that is truncated, or of another net
    def corrupt_model(d, model, state):
        data = open(model, "rb").read()
        cut = len(data) // 2
        if not model.endswith(".h5"):
            bounds = set(_top_level_boundaries(data))
            while cut in bounds:
                cut += 1
        open(model, "wb").write(data[:cut])

    def other_net(d, model, state):
        import caffepy
        text = BASE_NET.replace("num_output: 4", "num_output: 7")
        p = write(d, "other.prototxt", text)
        net = caffepy.Net(p, caffepy.TRAIN)
        (net.save_hdf5 if model.endswith(".h5") else net.save)(model)
        net.close()

    for i, (h5, fn, names) in enumerate([
            (False, corrupt_model, ("snap_iter_2.caffemodel",)),
            (False, other_net, ("ip1", "snap_iter_2.caffemodel")),
            (True, corrupt_model, ("snap_iter_2.caffemodel.h5",)),
            (True, other_net, ("ip1", "snap_iter_2.caffemodel.h5"))]):
        state_case("state-learned-net", i, h5, fn, names, subprocess=h5 and fn is corrupt_model)

    # binary state files cut short or random
    for i, slow in split(6, 6):
        def mutate(d, model, state, seed=i):
            r = rng_for("state-corrupt", seed)
            data = open(state, "rb").read()
            if seed % 2:
                bounds = set(_top_level_boundaries(data))
                while True:
                    cut = r.randint(1, len(data) - 1)
                    if cut not in bounds:
                        break
                data = data[:cut]
            else:
                while True:
                    data = bytes(r.randrange(256) for _ in range(r.randint(1, 500)))
                    if not _parses_as(data, "SolverState"):
                        break
            open(state, "wb").write(data)
        state_case("state-binary-corrupt", i, False, mutate, (S,), slow=slow)

    # HDF5 states
    def h5(fn):
        def mutate(d, model, state):
            import h5py
            with h5py.File(state, "a") as f:
                fn(f, d)
        return mutate

    def h5_replace(path, value):
        def fn(f, d):
            del f[path]
            f[path] = value
        return fn

    np_ = __import__("numpy")
    S5 = "snap_iter_2.solverstate.h5"
    h5_invalid = [
        (h5(lambda f, d: f.__delitem__("history/0")), (S5,)),
        (h5(lambda f, d: f.create_dataset("history/9", data=np_.zeros(3, "f4"))), (S5,)),
        (h5(h5_replace("history/0", np_.zeros((4, 2), "f4"))), (S5,)),
        (h5(h5_replace("history/1", np_.zeros(5, "f4"))), (S5,)),
        (h5(lambda f, d: f.__delitem__("history")), (S5, "history")),
        (h5(lambda f, d: f.__delitem__("iter")), (S5, "iter")),
        (h5(h5_replace("iter", np_.array([b"two"]))), (S5, "iter")),
        (h5(h5_replace("history/0", np_.array([[b"x"] * 2] * 3))), (S5,)),
        (h5(h5_replace("learned_net", np_.bytes_(b"/nonexistent/gone.caffemodel.h5"))),
         ("gone.caffemodel.h5",)),
        (h5(lambda f, d: f.__delitem__("history/2") or f.create_group("history/2")), (S5,)),
    ]
    for i, slow in split(len(h5_invalid), 0):
        fn, names = h5_invalid[i]
        state_case("state-h5-invalid", i, True, fn, names)

    for i, slow in split(3, 6):
        def mutate(d, model, state, seed=i):
            r = rng_for("state-h5-corrupt", seed)
            data = bytearray(open(state, "rb").read())
            mode = seed % 3
            if mode == 1:
                data = data[:r.randint(8, len(data) - 1)]
            elif mode == 2:
                corrupt_h5_signature(data, r)
            else:
                n = r.randint(16, 96)
                data[8:8 + n] = bytes(r.randrange(256) for _ in range(n))
            open(state, "wb").write(bytes(data))
        state_case("state-h5-corrupt", i, True, mutate, (S5,), slow=slow, subprocess=True)

    # a state of another update rule (SGD keeps one history blob a param, Adam two), and a
    # state whose learned_net is relative to another folder
    def other_rule(d, model, state):
        sp = os.path.join(d, "solver.prototxt")
        text = open(sp).read().replace('type: "SGD"', 'type: "Adam"')
        open(sp, "w").write(text)
    state_case("state-other-rule", 0, False, other_rule, (S,))
    state_case("state-other-rule", 1, True, other_rule, (S5,))

    def relative(name):
        def mutate(d, model, state):
            from caffepy.proto import caffe_pb2
            s = caffe_pb2.SolverState.FromString(open(state, "rb").read())
            s.learned_net = os.path.join("elsewhere", name or os.path.basename(model))
            open(state, "wb").write(s.SerializeToString())
        return mutate
    state_case("state-relative", 0, False, relative("other_model.caffemodel"),
               ("other_model.caffemodel",))

    # the model of that name beside the state is used (a run resumed from another folder)
    def build_beside(d):
        _, model, state, _ = make_snapshot(d)
        relative(None)(d, model, state)

    def run_beside(d):
        return run_solver(os.path.join(d, "solver.prototxt"), 1,
                          restore=os.path.join(d, S), expect_iter=2)
    add("state-relative", 1, "state", True, build_beside, run_beside)

    # a state file that is not there
    def nothing(d, model, state):
        os.remove(state)
    state_case("state-missing", 0, False, nothing, (S,))
    state_case("state-missing", 1, True, nothing, (S5,))


# -- data: LMDB ------------------------------------------------------------------------------

def make_lmdb(path, items, encoded=False):
    """items: [(key, C x H x W uint8 array or raw bytes, label)]."""
    from caffepy.data.db import write_lmdb
    from caffepy.data.datum import array_to_datum, encoded_datum
    recs = []
    for key, arr, label in items:
        if isinstance(arr, bytes):
            recs.append((key, arr))
        elif encoded:
            recs.append((key, encoded_datum(png_bytes(arr), label)))
        else:
            recs.append((key, array_to_datum(arr, label)))
    write_lmdb(path, recs, map_size=1 << 20)


def png_bytes(arr):
    import io
    from PIL import Image
    a = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def data_net(source, batch_size, extra="", type_="Data", param="data_param",
             more="backend: LMDB\n", transform=""):
    body = "%s {\n  source: \"%s\"\n  batch_size: %d\n  %s}\n%s" % (
        param, source, batch_size, more, transform)
    return ('name: "db"\n' + layer_text("data", type_, (), ("data", "label"), body + extra)
            + ip_text("ip", "data", "ip", 3) + loss_text("ip"))


def run_data_net(d, expect=None, phase="TRAIN", iters=1):
    """Forward the data net ``iters`` times; the first batch's data and labels must equal
    ``expect`` = (data, labels) when given."""
    import numpy as np
    import caffepy
    caffepy.set_random_seed(1701)
    net = caffepy.Net(os.path.join(d, "net.prototxt"), _phase(phase))
    try:
        res = {}
        for it in range(iters):
            res.update(net_results(net))
            if it == 0:
                res["data"] = host(net.blobs["data"].data)
                res["label"] = host(net.blobs["label"].data)
                if expect is not None:
                    data, labels = expect
                    if not np.array_equal(res["data"], data.astype(np.float32)):
                        raise AssertionError("data layer top differs from the stored records")
                    if not np.array_equal(res["label"], np.asarray(labels, np.float32)):
                        raise AssertionError("labels differ from the stored ones")
        return check_loss(res)
    finally:
        net.close()


def images(rng, n, c, h, w):
    import numpy as np
    r = np.random.RandomState(rng.randint(0, 2 ** 31 - 1))
    return [r.randint(0, 256, size=(c, h, w)).astype(np.uint8) for _ in range(n)]


def fam_lmdb():
    for i, slow in split(6, 6):
        rng = rng_for("lmdb-valid", i)
        n, c, h, w = rng.randint(2, 6), rng.choice([1, 3]), rng.randint(2, 6), rng.randint(2, 6)
        bs = rng.randint(1, n)
        encoded = i % 3 == 2
        scale = rng.choice([1.0, 0.5, 0.00390625])

        def build(d, n=n, c=c, h=h, w=w, bs=bs, seed=i, encoded=encoded, scale=scale):
            imgs = images(rng_for("lmdb-img", seed), n, c, h, w)
            make_lmdb(os.path.join(d, "db"), [("%08d" % k, im, k % 3)
                                              for k, im in enumerate(imgs)], encoded)
            write(d, "net.prototxt", data_net(os.path.join(d, "db"), bs,
                                              transform="transform_param {\n  scale: %r\n}\n"
                                              % scale))

        def run(d, n=n, c=c, h=h, w=w, bs=bs, seed=i, scale=scale, encoded=encoded):
            import numpy as np
            imgs = images(rng_for("lmdb-img", seed), n, c, h, w)
            data = np.stack(imgs[:bs]).astype(np.float32) * np.float32(scale)
            if encoded and c == 3:
                data = data[:, ::-1]        # a PNG holds RGB; decoded images are BGR
            return run_data_net(d, (data, [k % 3 for k in range(bs)]), iters=2)
        add("lmdb-valid", i, "data", True, build, run, slow=slow)

    def lmdb_case(i, items, names, bs=2, transform="", subprocess=False, after=None,
                  encoded=False, source="db", slow=False):
        def build(d):
            if items is not None:
                make_lmdb(os.path.join(d, "db"), items(), encoded)
            if after:
                after(d)
            write(d, "net.prototxt", data_net(os.path.join(d, source), bs, transform=transform))

        def run(d):
            return run_data_net(d, iters=2)
        add("lmdb-invalid", i, "data", False, build, run, names, subprocess=subprocess,
            slow=slow)

    np_ = __import__("numpy")
    u8 = lambda *s: np_.full(s, 7, np_.uint8)  # noqa: E731

    def datum_bytes(**kw):
        from caffepy.proto import caffe_pb2
        return caffe_pb2.Datum(**kw).SerializeToString()

    cases = [
        (None, ("nowhere_db",), {"source": "nowhere_db"}),
        (lambda: [("a", u8(1, 3, 3), 0), ("b", b"\xff\x00garbage\x99", 0)], ("b",), {}),
        (lambda: [("a", u8(1, 3, 3), 0), ("b", datum_bytes(channels=1, height=3, width=3,
                                                           data=b"\x01" * 5), 0)], ("b",), {}),
        (lambda: [("a", u8(1, 3, 3), 0), ("b", u8(1, 4, 3), 0)], ("b",), {}),
        (lambda: [("a", u8(1, 3, 3), 0), ("b", u8(3, 3, 3), 1)], ("b",), {}),
        (lambda: [("a", datum_bytes(channels=1, height=2, width=2, encoded=True,
                                    data=b"notapng"), 0)] * 1, ("a",), {}),
        (lambda: [("a", u8(1, 3, 3), 0)], ("data",),
         {"transform": "transform_param {\n  crop_size: 5\n}\n"}),
        (lambda: [("a", u8(1, 3, 3), 0)], ("missing_mean.binaryproto",),
         {"transform": "transform_param {\n  mean_file: \"missing_mean.binaryproto\"\n}\n"}),
        (lambda: [("a", u8(1, 3, 3), 0)], ("data",),
         {"transform": "transform_param {\n  mean_value: 1\n  mean_value: 2\n}\n"}),
        (lambda: [("a", datum_bytes(channels=0, height=3, width=3), 0)], ("a",), {}),
        (lambda: [("a", datum_bytes(channels=1, height=2, width=2,
                                    float_data=[1.0, 2.0, 3.0]), 0)], ("a",), {}),
        (lambda: [("a", u8(1, 3, 3), 0)], ("data",), {"bs": 0}),
        (lambda: [(b"\x00ok", u8(1, 3, 3), 0), (b"\xff\xfebad", b"\x08\x01\x10", 0)],
         ("b'\\xff\\xfebad'",), {}),
    ]
    for i, (items, names, kw) in enumerate(cases):
        if "source" in kw:
            lmdb_case(i, items, names, source=kw["source"])
        else:
            lmdb_case(i, items, names, bs=kw.get("bs", 2), transform=kw.get("transform", ""))

    # an empty database, a folder without data.mdb, a data.mdb that is not an LMDB
    def empty_db(d):
        make_lmdb(os.path.join(d, "db"), [])

    def no_mdb(d):
        os.makedirs(os.path.join(d, "db"))
    k = len(cases)
    add_empty = [(empty_db, ("db",)), (no_mdb, ("db",))]
    for j, (after, names) in enumerate(add_empty):
        lmdb_case(k + j, None, names, after=after, subprocess=True)

    # corrupt files (in a child): cut short, both meta pages overwritten, every B-tree page
    # overwritten with random bytes. Each leaves LMDB pages that cannot be trusted.
    for i, slow in split(3, 9):
        def after(d, seed=i):
            r = rng_for("lmdb-corrupt", seed)
            path = os.path.join(d, "db")
            imgs = images(r, r.randint(4, 40), 1, r.randint(2, 9), 4)
            make_lmdb(path, [("%04d" % k, im, 1) for k, im in enumerate(imgs)])
            mdb = os.path.join(path, "data.mdb")
            data = bytearray(open(mdb, "rb").read())
            page = 4096
            mode = seed % 3
            if mode == 0:
                data = data[:r.randint(0, len(data) - page)]
            elif mode == 1:
                data[:2 * page] = bytes(r.randrange(256) for _ in range(2 * page))
            else:
                data[2 * page:] = bytes(r.randrange(256) for _ in range(len(data) - 2 * page))
            open(mdb, "wb").write(bytes(data))
        lmdb_case(100 + i, None, ("db",), after=after, subprocess=True, slow=slow)


# -- data: huge sizes (in a child: nothing may be allocated for them) --------------------------

def _png_header_only(width, height):
    """A PNG whose header claims width x height gray pixels, with almost no pixel data."""
    def chunk(tag, body):
        return (struct.pack(">I", len(body)) + tag + body
                + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


def fam_data_huge():
    def datum_db(d):
        from caffepy.proto import caffe_pb2
        dt = caffe_pb2.Datum(channels=65535, height=65535, width=65535, data=b"\x01" * 16,
                             label=1)
        make_lmdb(os.path.join(d, "db"), [("huge_rec", dt.SerializeToString(), 0)])
        write(d, "net.prototxt", data_net(os.path.join(d, "db"), 2))

    def encoded_bomb(d):
        from caffepy.data.datum import encoded_datum
        make_lmdb(os.path.join(d, "db"), [("bomb_rec", encoded_datum(
            _png_header_only(60000, 60000), 1).SerializeToString(), 0)])
        write(d, "net.prototxt", data_net(os.path.join(d, "db"), 1))

    def image_list(d, png, more=""):
        write(d, "big.png", png)
        write(d, "list.txt", "big.png 0\n")
        write(d, "net.prototxt", data_net(
            os.path.join(d, "list.txt"), 1, type_="ImageData", param="image_data_param",
            more='root_folder: "%s/"\n  is_color: false\n%s' % (d, more)))

    def h5_declared(d):
        import h5py
        with h5py.File(os.path.join(d, "big.h5"), "w") as f:
            f.create_dataset("data", shape=(50000000, 2, 2, 2), dtype="f4", chunks=(4, 2, 2, 2))
            f.create_dataset("label", shape=(50000000,), dtype="f4", chunks=(64,))
        write(d, "list.txt", os.path.join(d, "big.h5") + "\n")
        write(d, "net.prototxt", data_net(os.path.join(d, "list.txt"), 2, type_="HDF5Data",
                                          param="hdf5_data_param", more=""))

    def mem_data(d):
        write(d, "net.prototxt", data_net("", 0).split("layer {")[0] + layer_text(
            "data", "MemoryData", (), ("data", "label"),
            "memory_data_param {\n  batch_size: 100000\n  channels: 100000\n"
            "  height: 1000\n  width: 1000\n}") + ip_text("ip", "data", "ip", 3)
            + loss_text("ip"))

    cases = [
        (datum_db, False, ("huge_rec",)),
        (encoded_bomb, False, ("bomb_rec",)),
        (lambda d: image_list(d, _png_header_only(60000, 60000)), False, ("big.png",)),
        (lambda d: image_list(d, png_bytes(__import__("numpy").zeros((1, 4, 4), "u1")),
                              "  new_height: 1000000\n  new_width: 1000000\n"), False,
         ("data",)),
        (h5_declared, True, ()),
        (mem_data, False, ("data",)),
    ]
    for i, (build, valid, names) in enumerate(cases):
        add("data-huge", i, "data", valid, build, lambda d: run_data_net(d), names,
            subprocess=True)


# -- data: transform_param -------------------------------------------------------------------

def _mean_file(path, shape, values=None):
    from caffepy.proto import caffe_pb2
    bp = caffe_pb2.BlobProto()
    bp.shape.dim.extend(shape)
    n = 1
    for v in shape:
        n *= v
    bp.data.extend([float(k % 7) for k in range(n)] if values is None else values)
    with open(path, "wb") as f:
        f.write(bp.SerializeToString())


TRANSFORMS = [
    # (valid, transform_param body, mean file shape or bytes or None, names)
    (True, 'mean_file: "mean.binaryproto"', [1, 3, 4, 5], ()),
    (True, "mean_value: 1\n  mean_value: 2\n  mean_value: 3", None, ()),
    (True, "crop_size: 4\n  mirror: true", None, ()),
    (True, 'mean_file: "mean.binaryproto"\n  crop_size: 3', [1, 3, 4, 5], ()),
    (True, "mean_value: 1\n  crop_size: 3\n  scale: 0.5", None, ()),
    (True, "force_gray: true", None, ()),
    (False, 'mean_file: "mean.binaryproto"', [1, 3, 2, 2], ("mean.binaryproto",)),
    (False, 'mean_file: "mean.binaryproto"', b"\xff\xff\xff\xff\x0f", ("mean.binaryproto",)),
    (False, 'mean_file: "mean.binaryproto"', ([1, 3, 4, 5], [1.0] * 7), ("mean.binaryproto",)),
    (False, 'mean_file: "mean.binaryproto"\n  mean_value: 3', [1, 3, 4, 5], ("mean_value",)),
    (False, "mean_value: 1\n  mean_value: 2", None, ("mean_value",)),
    (False, "crop_size: 5", None, ("crop_size",)),
    (False, "force_color: true\n  force_gray: true", None, ("force_gray",)),
    (False, 'mean_file: "no_mean.binaryproto"', None, ("no_mean.binaryproto",)),
]


def fam_transform():
    for i, (valid, body, mean, names) in enumerate(TRANSFORMS):
        def build(d, body=body, mean=mean):
            imgs = images(rng_for("transform", 0), 4, 3, 4, 5)
            make_lmdb(os.path.join(d, "db"), [("%03d" % k, im, 1) for k, im in enumerate(imgs)])
            if isinstance(mean, bytes):
                write(d, "mean.binaryproto", mean)
            elif isinstance(mean, tuple):
                _mean_file(os.path.join(d, "mean.binaryproto"), *mean)
            elif mean is not None:
                _mean_file(os.path.join(d, "mean.binaryproto"), mean)
            body = body.replace('mean_file: "', 'mean_file: "%s/' % d)
            write(d, "net.prototxt", data_net(os.path.join(d, "db"), 2,
                                              transform="transform_param {\n  %s\n}\n" % body))

        def run(d):
            return run_data_net(d, iters=3)
        add("data-transform", i, "data", valid, build, run, names)


# -- data: HDF5 and image lists --------------------------------------------------------------

def fam_hdf5_data():
    np_ = __import__("numpy")

    def h5file(path, **datasets):
        import h5py
        with h5py.File(path, "w") as f:
            for k, v in datasets.items():
                f[k] = v

    for i, slow in split(5, 5):
        rng = rng_for("hdf5-valid", i)
        nfiles = rng.randint(1, 3)
        n, c = rng.randint(2, 5), rng.randint(1, 4)
        bs = rng.randint(1, n)

        def arrays(seed, k, n=n, c=c):
            r = np_.random.RandomState(seed * 10 + k)
            return (r.randn(n, c, 2, 2).astype("f4"), r.randint(0, 3, n).astype("f4"))

        def build(d, nfiles=nfiles, bs=bs, seed=i):
            names = []
            for k in range(nfiles):
                x, y = arrays(seed, k)
                p = os.path.join(d, "part%d.h5" % k)
                h5file(p, data=x, label=y)
                names.append(p)
            write(d, "list.txt", "\n".join(names) + "\n")
            write(d, "net.prototxt", data_net(os.path.join(d, "list.txt"), bs, type_="HDF5Data",
                                              param="hdf5_data_param", more=""))

        def run(d, bs=bs, seed=i):
            x, y = arrays(seed, 0)
            return run_data_net(d, (x[:bs], y[:bs]), iters=3)
        add("hdf5-valid", i, "data", True, build, run, slow=slow)

    def case(i, make, names, bs=2):
        def build(d):
            lst = make(d)
            write(d, "net.prototxt", data_net(os.path.join(d, lst), bs, type_="HDF5Data",
                                              param="hdf5_data_param", more=""))

        def run(d):
            return run_data_net(d, iters=2)
        add("hdf5-invalid", i, "data", False, build, run, names)

    def one(d, name="bad.h5", **ds):
        p = os.path.join(d, name)
        h5file(p, **ds)
        write(d, "list.txt", p + "\n")
        return "list.txt"

    x = np_.zeros((4, 2, 2, 2), "f4")
    y = np_.zeros(4, "f4")
    invalid = [
        (lambda d: "gone_list.txt", ("gone_list.txt",)),
        (lambda d: write(d, "list.txt", os.path.join(d, "gone.h5") + "\n") and "list.txt",
         ("gone.h5",)),
        (lambda d: write(d, "list.txt", "\n\n") and "list.txt", ("list.txt",)),
        (lambda d: one(d, data=x), ("bad.h5", "label")),
        (lambda d: one(d, label=y), ("bad.h5", "data")),
        (lambda d: one(d, data=x, label=np_.zeros(3, "f4")), ("bad.h5",)),
        (lambda d: one(d, data=np_.array([b"a", b"b"]), label=np_.zeros(2, "f4")),
         ("bad.h5", "data")),
        (lambda d: one(d, data=np_.float32(3), label=np_.float32(1)), ("bad.h5", "data")),
        (lambda d: write(d, "bad.h5", b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
         and write(d, "list.txt", os.path.join(d, "bad.h5")) and "list.txt", ("bad.h5",)),
        (lambda d: write(d, "bad.h5", b"just text, not hdf5")
         and write(d, "list.txt", os.path.join(d, "bad.h5")) and "list.txt", ("bad.h5",)),
        (lambda d: one(d, data=np_.zeros((0, 2, 2, 2), "f4"), label=np_.zeros(0, "f4")),
         ("bad.h5",)),
        (lambda d: one(d, data=x, label=y.reshape(2, 2)) if False else
         one(d, data=x, label=np_.zeros((5, 1), "f4")), ("bad.h5",)),
    ]
    for i, (make, names) in enumerate(invalid):
        case(i, make, names)

    # dtypes and options Caffe reads, and files that do not go together
    def files(*contents, more=""):
        def build(d):
            paths = []
            for k, ds in enumerate(contents):
                paths.append(os.path.join(d, "f%d.h5" % k))
                h5file(paths[-1], **ds)
            write(d, "list.txt", "\n".join(paths) + "\n")
            write(d, "net.prototxt", data_net(os.path.join(d, "list.txt"), 3, type_="HDF5Data",
                                              param="hdf5_data_param", more=more))
        return build

    xi = np_.arange(4 * 2 * 2 * 2).reshape(4, 2, 2, 2)
    yi = np_.arange(4) % 2
    kinds = [
        (True, files(dict(data=xi.astype("i4"), label=yi.astype("i4"))), ()),
        (True, files(dict(data=xi.astype("f8"), label=yi.astype("f8"))), ()),
        (True, files(dict(data=xi.astype("f4"), label=yi.astype("f4")), more="shuffle: true\n"),
         ()),
        (True, files(dict(data=xi.astype("f4"), label=yi.astype("f4"),
                          extra=np_.zeros(2, "f4"))), ()),
        (True, files(dict(data=xi.astype("f4"), label=yi.astype("f4")),
                     dict(data=xi[:1].astype("f4"), label=yi[:1].astype("f4"))), ()),
        (False, files(dict(data=xi.astype("f4"), label=yi.astype("f4")),
                      dict(data=np_.zeros((4, 3, 2, 2), "f4"), label=yi.astype("f4"))),
         ("f1.h5",)),
        (False, files(dict(data=xi > 3, label=yi.astype("f4"))), ("f0.h5",)),
        (False, files(dict(data=xi.astype("c8"), label=yi.astype("f4"))), ("f0.h5",)),
    ]
    for i, (valid, build, names) in enumerate(kinds):
        def run(d, valid=valid):
            if not valid:
                return run_data_net(d, iters=4)
            import h5py
            with h5py.File(os.path.join(d, "f0.h5"), "r") as f:
                x, y = np_.asarray(f["data"], "f4"), np_.asarray(f["label"], "f4")
            shuffled = "shuffle" in open(os.path.join(d, "net.prototxt")).read()
            return run_data_net(d, None if shuffled else (x[:3], y[:3]), iters=4)
        add("hdf5-kinds", i, "data", valid, build, run, names)


def fam_image_data():
    np_ = __import__("numpy")

    def save_png(path, arr):
        open(path, "wb").write(png_bytes(arr))

    for i, slow in split(5, 5):
        rng = rng_for("image-valid", i)
        n, h, w = rng.randint(2, 5), rng.randint(2, 6), rng.randint(2, 6)
        bs = rng.randint(1, n)
        resize = i % 3 == 2

        def build(d, n=n, h=h, w=w, bs=bs, seed=i, resize=resize):
            imgs = images(rng_for("image-img", seed), n, 1, h, w)
            lines = []
            for k, im in enumerate(imgs):
                save_png(os.path.join(d, "img %d.png" % k), im)   # a space in the name
                lines.append("img %d.png %d" % (k, k % 2))
            write(d, "list.txt", "\n".join(lines) + "\n")
            more = 'root_folder: "%s/"\n  is_color: false\n' % d
            if resize:
                more += "  new_height: 3\n  new_width: 4\n"
            write(d, "net.prototxt", data_net(os.path.join(d, "list.txt"), bs, type_="ImageData",
                                              param="image_data_param", more=more))

        def run(d, n=n, h=h, w=w, bs=bs, seed=i, resize=resize):
            imgs = images(rng_for("image-img", seed), n, 1, h, w)
            if resize:
                return run_data_net(d, iters=2)
            data = np_.stack(imgs[:bs]).astype("f4")
            return run_data_net(d, (data, [k % 2 for k in range(bs)]), iters=2)
        add("image-valid", i, "data", True, build, run, slow=slow)

    # a list written on Windows (CRLF line ends), paths with spaces
    def build_crlf(d):
        imgs = images(rng_for("image-crlf", 0), 3, 1, 3, 4)
        for k, im in enumerate(imgs):
            save_png(os.path.join(d, "my img %d.png" % k), im)
        write(d, "list.txt", "".join("my img %d.png %d\r\n" % (k, k) for k in range(3)))
        write(d, "net.prototxt", data_net(os.path.join(d, "list.txt"), 2, type_="ImageData",
                                          param="image_data_param",
                                          more='root_folder: "%s/"\n  is_color: false\n' % d))

    def run_crlf(d):
        imgs = images(rng_for("image-crlf", 0), 3, 1, 3, 4)
        return run_data_net(d, (np_.stack(imgs[:2]).astype("f4"), [0, 1]), iters=2)
    add("image-valid-crlf", 0, "data", True, build_crlf, run_crlf)

    # color images: a PNG holds RGB, the top holds BGR (Caffe reads images through OpenCV)
    for i, slow in split(3, 3):
        rng = rng_for("image-color", i)
        n, h, w = rng.randint(2, 4), rng.randint(2, 6), rng.randint(2, 6)
        bs = rng.randint(1, n)

        def build(d, n=n, h=h, w=w, bs=bs, seed=i):
            imgs = images(rng_for("image-color-img", seed), n, 3, h, w)
            for k, im in enumerate(imgs):
                save_png(os.path.join(d, "c%d.png" % k), im)
            write(d, "list.txt", "".join("c%d.png %d\n" % (k, k % 2) for k in range(n)))
            write(d, "net.prototxt", data_net(os.path.join(d, "list.txt"), bs, type_="ImageData",
                                              param="image_data_param",
                                              more='root_folder: "%s/"\n' % d))

        def run(d, n=n, h=h, w=w, bs=bs, seed=i):
            imgs = images(rng_for("image-color-img", seed), n, 3, h, w)
            data = np_.stack(imgs[:bs])[:, ::-1].astype("f4")
            return run_data_net(d, (data, [k % 2 for k in range(bs)]), iters=2)
        add("image-valid-color", i, "data", True, build, run, slow=slow)

    def case(i, make, names, bs=2, more=""):
        def build(d):
            make(d)
            write(d, "net.prototxt", data_net(
                os.path.join(d, "list.txt"), bs, type_="ImageData", param="image_data_param",
                more='root_folder: "%s/"\n  is_color: false\n%s' % (d, more)))

        def run(d):
            return run_data_net(d, iters=2)
        add("image-invalid", i, "data", False, build, run, names)

    def good(d, k, h=3, w=3):
        save_png(os.path.join(d, "g%d.png" % k), np_.full((1, h, w), 9, np_.uint8))

    invalid = [
        (lambda d: None, ("list.txt",)),
        (lambda d: write(d, "list.txt", "gone.png 1\n"), ("gone.png",)),
        (lambda d: good(d, 0) or write(d, "list.txt", "g0.png 1\ng0.png one\n"), ("list.txt",)),
        (lambda d: good(d, 0) or write(d, "list.txt", "g0.png\n"), ("list.txt",)),
        (lambda d: (write(d, "junk.png", b"\x89PNG not really"),
                    write(d, "list.txt", "junk.png 0\n")),
         ("junk.png",)),
        (lambda d: good(d, 0) or good(d, 1, 4, 5) or write(d, "list.txt", "g0.png 0\ng1.png 1\n"),
         ("g1.png",)),
        (lambda d: write(d, "list.txt", "\n   \n"), ("list.txt",)),
        (lambda d: (write(d, "empty.png", b""), write(d, "list.txt", "empty.png 0\n")),
         ("empty.png",)),
        (lambda d: good(d, 0) or write(d, "list.txt", b"g0.png 0\n\xff\xfe.png 1\n"),
         ("list.txt",)),
    ]
    for i, (make, names) in enumerate(invalid):
        case(i, make, names)


def fam_window_data():
    """R-CNN window files (WindowData): a good one, and files broken line by line."""
    head = "# 0\n{d}/a.png\n3\n20\n30\n"
    files = [
        (True, head + "2\n1 0.9 2 2 10 10\n0 0.1 5 5 25 15\n", ()),
        (False, None, ("win.txt",)),
        (False, "", ("win.txt",)),
        (False, "0\n{d}/a.png\n3\n20\n30\n1\n1 0.9 2 2 10 10\n", ("win.txt", "line 1")),
        (False, "# 0\n{d}/a.png\n3\ntwenty\n30\n1\n1 0.9 2 2 10 10\n",
         ("win.txt", "line 4")),
        (False, head + "1\n1 0.9 2 2\n", ("win.txt",)),
        (False, head.replace("a.png", "gone.png") + "2\n1 0.9 2 2 10 10\n0 0.1 5 5 25 15\n",
         ("gone.png",)),
        (False, head + "1\n0 0.1 2 2 10 10\n", ("win.txt", "foreground")),
        (False, head + "2\n1 0.9 10 10 2 2\n0 0.1 25 15 5 5\n", ("a.png",)),
        (False, head + "2\n0 0.9 2 2 10 10\n0 0.1 5 5 25 15\n", ("win.txt", "line 7")),
    ]
    for i, (valid, text, names) in enumerate(files):
        def build(d, text=text):
            import numpy as np
            from PIL import Image
            Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(os.path.join(d, "a.png"))
            if text is not None:
                write(d, "win.txt", text.replace("{d}", d))
            write(d, "net.prototxt", 'name: "w"\n' + layer_text(
                "data", "WindowData", (), ("data", "label"),
                'window_data_param {\n  source: "%s/win.txt"\n  batch_size: 4\n'
                "  fg_threshold: 0.5\n  bg_threshold: 0.5\n  fg_fraction: 0.25\n}\n"
                "transform_param {\n  crop_size: 8\n  mirror: true\n}" % d)
                + ip_text("ip", "data", "ip", 3) + loss_text("ip"))
        add("window-data", i, "data", valid, build, lambda d: run_data_net(d, iters=3), names)


# -- Python layers ---------------------------------------------------------------------------

PY_GOOD = '''
import numpy as np
import caffe


class Scale(caffe.Layer):
    def setup(self, bottom, top):
        self.k = float(self.param_str or 2)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.k * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = self.k * top[0].diff
'''


PY_LOSS = '''
import numpy as np
import caffe


class Euclid(caffe.Layer):
    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs")

    def reshape(self, bottom, top):
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if propagate_down[i]:
                sign = 1 if i == 0 else -1
                bottom[i].diff[...] = sign * self.diff / bottom[i].num
'''

PY_PARAM = '''
import numpy as np
import caffe


class Mul(caffe.Layer):
    def setup(self, bottom, top):
        self.blobs.add_blob(*bottom[0].data.shape[1:])
        self.blobs[0].data[...] = 1.5

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data * self.blobs[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[...] += (top[0].diff * bottom[0].data).sum(axis=0)
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * self.blobs[0].data
'''


def py_net(module, cls, param_str=""):
    return ('name: "py"\n' + dummy_data(2, 3, 0, 0)
            + layer_text("pyl", "Python", ("data",), ("pyout",),
                         'python_param {\n  module: "%s"\n  layer: "%s"\n  param_str: "%s"\n}'
                         % (module, cls, param_str))
            + ip_text("ip", "pyout", "ip", 2) + loss_text("ip"))


def run_py(d, module, check_scale=None):
    import numpy as np
    sys.path.insert(0, d)
    try:
        import caffepy
        caffepy.set_random_seed(1701)
        net = caffepy.Net(os.path.join(d, "net.prototxt"), caffepy.TRAIN)
        try:
            res = net_results(net)
            res["pyout"] = host(net.blobs["pyout"].data)
            if check_scale is not None:
                want = np.float32(check_scale) * host(net.blobs["data"].data)
                if not np.array_equal(res["pyout"], want):
                    raise AssertionError("Python layer output is not %g x its input"
                                         % check_scale)
            return check_loss(res)
        finally:
            net.close()
    finally:
        sys.path.remove(d)
        sys.modules.pop(module, None)


def fam_python():
    for i, slow in split(3, 0):
        module = "fzpy_ok%d" % i
        k = ["", "3", "0.5"][i]

        def build(d, module=module, k=k):
            write(d, module + ".py", PY_GOOD)
            write(d, "net.prototxt", py_net(module, "Scale", k))
        add("python-valid", i, "python", True, build,
            lambda d, module=module, k=k: run_py(d, module, float(k or 2)))

    # a Python loss (its value against NumPy's) and a Python layer with a learned blob that a
    # solver trains (its update against plain SGD's)
    def build_loss(d):
        write(d, "fzpy_loss.py", PY_LOSS)
        write(d, "net.prototxt", 'name: "pyloss"\n' + dummy_data(2, 3, 0, 0)
              + ip_text("ip", "data", "ip", 3) + layer_text(
                  "pyl", "Python", ("ip", "data"), ("l",),
                  'python_param {\n  module: "fzpy_loss"\n  layer: "Euclid"\n}\n'
                  "loss_weight: 1"))

    def run_loss(d):
        import numpy as np
        sys.path.insert(0, d)
        try:
            import caffepy
            caffepy.set_random_seed(1701)
            net = caffepy.Net(os.path.join(d, "net.prototxt"), caffepy.TRAIN)
            try:
                res = net_results(net)
                a = host(net.blobs["ip"].data).astype(np.float64)
                b = host(net.blobs["data"].data).astype(np.float64)
                want = ((a - b) ** 2).sum() / 2 / a.shape[0]
                if not abs(float(res["l"].ravel()[0]) - want) <= 1e-5 * max(1.0, want):
                    raise AssertionError("Python loss %r, expected %r" % (res["l"], want))
                w = host(net.params["ip"][0].data).astype(np.float64)
                dw = host(net.params["ip"][0].diff).astype(np.float64)
                if not np.allclose(dw, (a - b).T.dot(b) / a.shape[0], rtol=1e-4, atol=1e-5):
                    raise AssertionError("the Python loss's gradient does not reach ip (%s)"
                                         % (w.shape,))
                return res
            finally:
                net.close()
        finally:
            sys.path.remove(d)
            sys.modules.pop("fzpy_loss", None)
    add("python-valid", 3, "python", True, build_loss, run_loss)

    def build_param(d):
        write(d, "fzpy_param.py", PY_PARAM)
        data = dummy_data(2, 3, 0, 0).replace('type: "gaussian"', 'type: "constant"').replace(
            "std: 1", "value: 0.5")            # the same data at every forward
        net = write(d, "pnet.prototxt", 'name: "pyparam"\n' + data
                    + layer_text("pyl", "Python", ("data",), ("pyout",),
                                 'python_param {\n  module: "fzpy_param"\n  layer: "Mul"\n}')
                    + ip_text("ip", "pyout", "ip", 2) + loss_text("ip"))
        write(d, "solver.prototxt", solver_text(net, d).replace("momentum: 0.9\n", "")
              .replace("weight_decay: 0.0005\n", ""))

    def run_param(d):
        import numpy as np
        sys.path.insert(0, d)
        try:
            import caffepy
            from caffepy.solver import get_solver
            caffepy.set_random_seed(1701)
            s = get_solver(os.path.join(d, "solver.prototxt"))
            try:
                s.net.forward()
                s.net.clear_param_diffs()
                s.net.backward()
                w0 = host(s.net.params["pyl"][0].data)
                g = host(s.net.params["pyl"][0].diff)
                s.step(1)
                w1 = host(s.net.params["pyl"][0].data)
                # plain SGD, no momentum or decay: w1 = w0 - lr * g, in float32
                want = w0 - np.float32(0.01) * g
                if not np.all(g != 0) or not np.allclose(w1, want, rtol=1e-6, atol=0):
                    raise AssertionError("the Python layer's blob after one SGD step is %s, "
                                         "expected %s" % (w1, want))
                return {"w1": w1, "g": g, "smoothed_loss": np.array([float(s.smoothed_loss)])}
            finally:
                s.net.close()
        finally:
            sys.path.remove(d)
            sys.modules.pop("fzpy_param", None)
    add("python-valid", 4, "python", True, build_param, run_param)

    raising = [
        ("setup", "ValueError('bad param_str')", ("pyl", "bad param_str")),
        ("setup", "KeyError('nokey')", ("pyl", "nokey")),
        ("forward", "ZeroDivisionError('div by zero in forward')", ("pyl", "div by zero")),
        ("forward", "RuntimeError('forward failed')", ("pyl", "forward failed")),
        ("reshape", "IndexError('reshape out of range')", ("pyl", "reshape out of range")),
        ("backward", "TypeError('backward type')", ("pyl", "backward type")),
        ("__init__", "AttributeError('no init')", ("pyl", "no init")),
        ("setup", "AssertionError('assert in setup')", ("pyl", "assert in setup")),
        ("forward", "MemoryError('too big')", ("pyl", "too big")),
        ("setup", "SystemError('sys')", ("pyl", "sys")),
    ]
    for i, (method, exc, names) in enumerate(raising):
        module = "fzpy_raise%d" % i
        # the raising method comes last in the class body, so it replaces the good one
        src = PY_GOOD + "\n    def %s(self, *a, **k):\n        raise %s\n" % (method, exc)

        def build(d, module=module, src=src, method=method):
            write(d, module + ".py", src)
            text = py_net(module, "Scale")
            if method == "backward":       # the layer's input needs no gradient otherwise
                text = "force_backward: true\n" + text
            write(d, "net.prototxt", text)
        add("python-raises", i, "python", False, build,
            lambda d, module=module: run_py(d, module), names)

    broken = [
        ("fzpy_gone", None, "Scale", ("pyl", "fzpy_gone")),
        ("fzpy_nocls", PY_GOOD, "Missing", ("pyl", "Missing")),
        ("fzpy_syntax", "def broken(:\n", "Scale", ("pyl", "fzpy_syntax")),
        ("fzpy_importerr", "import fzpy_not_installed_anywhere\n", "Scale",
         ("pyl", "fzpy_not_installed_anywhere")),
        ("fzpy_raise_on_import", "raise RuntimeError('import time failure')\n", "Scale",
         ("pyl", "import time failure")),
        ("fzpy_notclass", "Scale = 42\n", "Scale", ("pyl", "Scale")),
        ("fzpy_noforward", "class Scale(object):\n    def __init__(self, p):\n        pass\n"
         "    def setup(self, b, t):\n        pass\n    def reshape(self, b, t):\n"
         "        t[0].reshape(*b[0].data.shape)\n", "Scale", ("pyl", "forward")),
        ("fzpy_badtop", PY_GOOD.replace("top[0].reshape(*bottom[0].data.shape)",
                                        "top[0].reshape(7, 7)"), "Scale", ("loss",)),
    ]
    for i, (module, src, cls, names) in enumerate(broken):
        def build(d, module=module, src=src, cls=cls):
            if src is not None:
                write(d, module + ".py", src)
            write(d, "net.prototxt", py_net(module, cls))
        add("python-broken", i, "python", False, build,
            lambda d, module=module: run_py(d, module), names)


# -- the command line (child processes) --------------------------------------------------------

def fam_cli():
    def train_build(d, mutate=None, h5=False):
        _, model, state, _ = make_snapshot(d, h5)
        sp = os.path.join(d, "solver.prototxt")
        text = open(sp).read().replace("max_iter: 100", "max_iter: 3").replace(
            "display: 0", "display: 1")
        open(sp, "w").write(text)
        if mutate:
            mutate(d, model, state)

    def truncate(path):
        data = open(path, "rb").read()
        bounds = set() if path.endswith(".h5") else set(_top_level_boundaries(data))
        cut = len(data) // 3
        while cut in bounds:
            cut += 1
        open(path, "wb").write(data[:cut])

    def cli_case(i, valid, build, argv, names=(), slow=False):
        def run(d):
            return {"argv": [a.replace("{d}", d) for a in argv]}
        add("cli", i, "cli", valid, build, run, names, cli=True, slow=slow)

    cli_case(0, True, train_build, ["train", "-solver", "{d}/solver.prototxt"])
    cli_case(1, True, train_build, ["test", "-model", "{d}/snapnet.prototxt", "-weights",
                                    "{d}/snap_iter_2.caffemodel", "-iterations", "2"])
    cli_case(2, True, train_build, ["train", "-solver", "{d}/solver.prototxt", "-snapshot",
                                    "{d}/snap_iter_2.solverstate"])
    cli_case(3, False, train_build, ["train", "-solver", "{d}/nope_solver.prototxt"],
             ("nope_solver.prototxt",))
    cli_case(4, False, lambda d: train_build(d, lambda d, m, s: truncate(m)),
             ["test", "-model", "{d}/snapnet.prototxt", "-weights",
              "{d}/snap_iter_2.caffemodel", "-iterations", "1"], ("snap_iter_2.caffemodel",))
    cli_case(5, False, lambda d: train_build(d, lambda d, m, s: truncate(s)),
             ["train", "-solver", "{d}/solver.prototxt", "-snapshot",
              "{d}/snap_iter_2.solverstate"], ("snap_iter_2.solverstate",))
    cli_case(6, False, lambda d: train_build(d, lambda d, m, s: truncate(m)),
             ["train", "-solver", "{d}/solver.prototxt", "-weights",
              "{d}/snap_iter_2.caffemodel"], ("snap_iter_2.caffemodel",))
    cli_case(7, False, lambda d: train_build(d, lambda d, m, s: write(
        d, "snapnet.prototxt", BASE_NET.replace('type: "ReLU"', 'type: "ReLUX"'))),
        ["train", "-solver", "{d}/solver.prototxt"], ("relu1", "ReLUX"))
    cli_case(8, False, train_build, ["test", "-model", "{d}/gone_model.prototxt", "-weights",
                                     "{d}/snap_iter_2.caffemodel"], ("gone_model.prototxt",))
    cli_case(9, False, lambda d: train_build(d, lambda d, m, s: truncate(m), h5=True),
             ["train", "-solver", "{d}/solver.prototxt", "-snapshot",
              "{d}/snap_iter_2.solverstate.h5"], ("snap_iter_2.caffemodel.h5",), slow=True)
    cli_case(10, True, lambda d: train_build(d, h5=True),
             ["train", "-solver", "{d}/solver.prototxt", "-snapshot",
              "{d}/snap_iter_2.solverstate.h5"], slow=True)
    cli_case(11, False, lambda d: train_build(d, lambda d, m, s: write(
        d, "snapnet.prototxt", BASE_NET.replace("num_output: 4", "num_output: 5"))),
        ["test", "-model", "{d}/snapnet.prototxt", "-weights", "{d}/snap_iter_2.caffemodel",
         "-iterations", "1"], ("ip1", "snap_iter_2.caffemodel"), slow=True)

    more = [
        (["train", "-solverr", "{d}/solver.prototxt"], ("solverr",)),
        (["test", "-model", "{d}/snapnet.prototxt", "-weights", "{d}/snap_iter_2.caffemodel",
          "-iterations", "abc"], ("iterations", "abc")),
        (["train", "-solver", "{d}/solver.prototxt", "-snapshot", "{d}/snap_iter_2.solverstate",
          "-weights", "{d}/snap_iter_2.caffemodel"], ("snapshot", "weights")),
        (["test", "-model", "{d}/snap_iter_2.caffemodel", "-weights",
          "{d}/snap_iter_2.caffemodel", "-iterations", "1"], ("snap_iter_2.caffemodel",)),
        (["train", "-solver", "{d}/solver.prototxt", "-sigint_effect", "explode"],
         ("explode",)),
        (["test", "-model", "{d}/snapnet.prototxt", "-weights",
          "{d}/snap_iter_2.caffemodel,{d}/gone2.caffemodel", "-iterations", "1"],
         ("gone2.caffemodel",)),
        (["trian", "-solver", "{d}/solver.prototxt"], ("trian",)),
    ]
    for j, (argv, names) in enumerate(more):
        cli_case(12 + j, False, train_build, argv, names, slow=j >= 2)

    # tools writing into a folder that does not exist
    def tools_build(d):
        train_build(d)
        import numpy as np
        make_lmdb(os.path.join(d, "imgdb"), [("%d" % k, np.zeros((1, 3, 3), np.uint8), 0)
                                             for k in range(3)])
    tools = [
        ["prune", "-model", "{d}/snapnet.prototxt", "-weights", "{d}/snap_iter_2.caffemodel",
         "-out_model", "{d}/nodir/p.prototxt", "-out_weights", "{d}/nodir/p.caffemodel"],
        ["compute_image_mean", "{d}/imgdb", "{d}/nodir/mean.binaryproto"],
        ["upgrade_net_proto_binary", "{d}/snap_iter_2.caffemodel", "{d}/nodir/u.caffemodel"],
        ["upgrade_solver_proto_text", "{d}/solver.prototxt", "{d}/nodir/s.prototxt"],
    ]
    for j, argv in enumerate(tools):
        cli_case(30 + j, False, tools_build, argv, ("nodir",), slow=j >= 2)

    # training from a database that is missing, or whose file is cut short
    def db_build(d, cut):
        import numpy as np
        path = os.path.join(d, "train_db")
        make_lmdb(path, [("%03d" % k, np.full((1, 4, 4), k, np.uint8), k % 3)
                         for k in range(40)])
        if cut:
            mdb = os.path.join(path, "data.mdb")
            data = open(mdb, "rb").read()
            open(mdb, "wb").write(data[:len(data) // 2])
        net = write(d, "dbnet.prototxt", data_net(os.path.join(d, "train_db" if cut else
                                                               "missing_db"), 4))
        write(d, "solver.prototxt", solver_text(net, d).replace("max_iter: 100", "max_iter: 2"))

    # a Python layer whose module is not importable, through the command line
    def py_build(d):
        train_build(d)
        write(d, "pynet.prototxt", py_net("fzpy_cli_absent", "Scale"))
    cli_case(42, False, py_build, ["test", "-model", "{d}/pynet.prototxt", "-weights",
                                   "{d}/snap_iter_2.caffemodel", "-iterations", "1"],
             ("pyl", "fzpy_cli_absent"), slow=True)
    cli_case(40, False, lambda d: db_build(d, False), ["train", "-solver", "{d}/solver.prototxt"],
             ("missing_db",))
    cli_case(41, False, lambda d: db_build(d, True), ["train", "-solver", "{d}/solver.prototxt"],
             ("train_db",), slow=True)


# ---------------------------------------------------------------------------------------

FAMILIES = [fam_net_valid, fam_net_text, fam_net_graph, fam_geometry, fam_zero_size,
            fam_layer_config, fam_solver, fam_weights, fam_state, fam_lmdb, fam_data_huge,
            fam_transform, fam_hdf5_data, fam_image_data, fam_window_data, fam_python,
            fam_cli]


def cases():
    if not CASES:
        for fam in FAMILIES:
            fam()
        ids = [c.id for c in CASES]
        dup = {i for i in ids if ids.count(i) > 1}
        assert not dup, "duplicate case ids: %s" % sorted(dup)
    return list(CASES)


def case_by_id(case_id):
    for c in cases():
        if c.id == case_id:
            return c
    raise KeyError(case_id)


# -- the child side of subprocess cases ------------------------------------------------------

def child_main(case_id, d, result_path):
    """Run one case's entry point and write what happened as JSON."""
    case = case_by_id(case_id)
    try:
        res = case.run(d)
    except BaseException as e:  # the parent judges; a child must always report
        from caffepy import CaffepyError
        out = {"status": "error", "type": type(e).__name__, "message": str(e),
               "caffepy": isinstance(e, CaffepyError)}
    else:
        import numpy as np
        bad = [k for k, v in res.items() if np.asarray(v).size == 0
               or not np.all(np.isfinite(np.asarray(v, dtype=np.float64)))]
        out = {"status": "ok", "not_finite": bad, "keys": sorted(res)}
    with open(result_path, "w") as f:
        json.dump(out, f)


def measure_main(meter_path, argv):
    """Run ``argv`` as a child of this small process and write its wait status and peak RSS.

    The peak is measured here rather than by the test process: Linux carries a process's
    high-water RSS across fork and exec, so a child forked straight from a large pytest process
    would report pytest's size. This process is a fresh interpreter that imports nothing big."""
    import subprocess
    p = subprocess.Popen(argv)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = 0
    with open(meter_path, "w") as f:
        json.dump({"status": status, "maxrss_kb": usage.ru_maxrss}, f)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "run":
        child_main(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) > 4 and sys.argv[1] == "measure" and sys.argv[3] == "--":
        measure_main(sys.argv[2], sys.argv[4:])
    elif len(sys.argv) == 2 and sys.argv[1] == "list":
        for c in cases():
            print(c.id, c.category, "valid" if c.valid else "invalid",
                  "slow" if c.slow else "", "subprocess" if c.subprocess else "")
    else:
        sys.exit("usage: fuzz_corpus.py run CASE_ID DIR RESULT.json | list | "
                 "measure METER.json -- ARGV...")
