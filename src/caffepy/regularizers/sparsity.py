"""Sparsity statistics and the SSL fork's sparsity log block, and a parser for it.

On display iterations the fork logs, for every learnable param (layer order, weights then
biases), four messages, each one log record whose text is a header, a newline, then one value
per param each followed by a tab::

        Element Sparsity %:
    2.57117	0	2.67155	0	...
         Column Sparsity %:
    0	0	0	0	...
            Row Sparsity %:
    0	0	0	0.3	...
          Block Sparsity %:
    (121,1):0;		(25,1):0;		...

and after the update ``    Total regularization terms: R loss+regular. : R+smoothed_loss``.

- Element = 100 · #(|w| < 1e-4) / count;
- Column = 100 · #(all-exactly-zero columns) / C of the whole M × C matrix (M = shape[0],
  C = count / M; conv groups are not looked at here);
- Row = 100 · #(all-zero rows) / M;
- Block = for each ``block_group_lasso`` spec of the param's ParamSpec, ``(xdimen,ydimen):pct;``
  with pct = 100 · #(all-zero ydimen × xdimen blocks) / #blocks; then a tab.

Numbers are formatted as C++ iostreams do by default (``%g``: 6 significant digits).
"""
import math
import re

import numpy as np

from .. import backend
from .base import learnable_param_info
from .group_lasso import group_view, matrix_shape
from .masks import ZEROUT_THRESHOLD, threshold_like

ELEMENT_HEADER = "    Element Sparsity %: "
COLUMN_HEADER = "     Column Sparsity %: "
ROW_HEADER = "        Row Sparsity %: "
BLOCK_HEADER = "      Block Sparsity %: "
TOTAL_PREFIX = "    Total regularization terms: "


def format_g(x):
    """A number as ``std::ostream << x`` prints it by default (precision 6, like %g)."""
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return "%g" % x


class ParamSparsity:
    """The sparsity of one param: ``element``, ``column``, ``row`` (percentages) and
    ``blocks``, a list of (xdimen, ydimen, percentage) per block spec."""
    __slots__ = ("element", "column", "row", "blocks")

    def __init__(self, element, column, row, blocks=()):
        self.element, self.column, self.row = float(element), float(column), float(row)
        self.blocks = [(int(x), int(y), float(p)) for x, y, p in blocks]

    def __eq__(self, other):
        return (isinstance(other, ParamSparsity) and self.element == other.element
                and self.column == other.column and self.row == other.row
                and self.blocks == other.blocks)

    def __repr__(self):
        return "ParamSparsity(element=%g, column=%g, row=%g, blocks=%r)" % (
            self.element, self.column, self.row, self.blocks)


def _spec_dims(spec):
    if isinstance(spec, (tuple, list)):
        return int(spec[0]), int(spec[1])
    return int(spec.xdimen), int(spec.ydimen)


def param_sparsity(data, block_specs=(), threshold=ZEROUT_THRESHOLD, where=""):
    """ParamSparsity of one weight array. ``block_specs``: BlockGroupLassoSpec messages or
    (xdimen, ydimen) pairs. A block size that does not tile the matrix is a RegularizerError."""
    xp = backend.array_module(data)
    count = int(data.size)
    m, c = matrix_shape(data.shape)
    if count == 0:
        return ParamSparsity(0, 0, 0, [(x, y, 0) for x, y in map(_spec_dims, block_specs)])
    element = 100.0 * int((xp.abs(data) < threshold_like(data, threshold)).sum()) / count
    nz = (data.reshape(m, c) != 0)
    column = 100.0 * int((~nz.any(axis=0)).sum()) / c
    row = 100.0 * int((~nz.any(axis=1)).sum()) / m
    blocks = []
    for spec in block_specs:
        x, y = _spec_dims(spec)
        view = group_view("block", data.shape, 1, x, y, where)
        anyb = nz.reshape(view.vshape).any(axis=view.axes)
        blocks.append((x, y, 100.0 * int((~anyb).sum()) / anyb.size))
    return ParamSparsity(element, column, row, blocks)


def net_sparsity(net, threshold=ZEROUT_THRESHOLD):
    """[ParamSparsity] for ``net.learnable_params`` in order; block specs from each param's
    (owner's) ParamSpec ``block_group_lasso``."""
    out = []
    for info, blob in zip(learnable_param_info(net), net.learnable_params):
        specs = list(info.param_spec.block_group_lasso) if info.param_spec is not None else []
        where = ("layer '%s' param %d" % (info.layer_name, info.blob_index)
                 if info.layer_name is not None else "")
        out.append(param_sparsity(blob.data, specs, threshold, where))
    return out


def sparsity_messages(stats):
    """The four log messages (element, column, row, block) for a list of ParamSparsity,
    exactly as the fork prints them; log each as one record."""
    element = ELEMENT_HEADER + "\n" + "".join(format_g(s.element) + "\t" for s in stats)
    column = COLUMN_HEADER + "\n" + "".join(format_g(s.column) + "\t" for s in stats)
    row = ROW_HEADER + "\n" + "".join(format_g(s.row) + "\t" for s in stats)
    block = BLOCK_HEADER + "\n" + "".join(
        "".join("(%d,%d):%s;" % (x, y, format_g(p)) for x, y, p in s.blocks) + "\t"
        for s in stats)
    return [element, column, row, block]


def regularization_message(total, smoothed_loss):
    """``    Total regularization terms: R loss+regular. : R+smoothed_loss`` (float32 sums, as
    the fork's Dtype)."""
    r = np.float32(total)
    return "%s%s loss+regular. : %s" % (TOTAL_PREFIX, format_g(r),
                                         format_g(np.float32(r + np.float32(smoothed_loss))))


# -- reading a log back -----------------------------------------------------------------------

_HEADERS = (("element", "Element Sparsity %:"), ("column", "Column Sparsity %:"),
            ("row", "Row Sparsity %:"), ("block", "Block Sparsity %:"))
_ITER = re.compile(r"Iteration (\d+)")
_TOTAL = re.compile(r"Total regularization terms: (\S+) loss\+regular\. : (\S+)")
_BLOCK = re.compile(r"\((\d+),(\d+)\):([^;]*);")


def _num(text):
    t = text.strip()
    if t.lstrip("-+").lower() == "nan":
        return float("nan")
    return float(t)


def _values(line):
    parts = line.rstrip("\r\n").split("\t")
    if parts and parts[-1] == "":
        parts.pop()
    return parts


def parse_sparsity_log(text):
    """Read the sparsity blocks and total-regularization lines of a training log (with or
    without glog prefixes) back into numbers.

    Returns a list of records, one per display iteration, in log order; each a dict with
    ``iteration`` (the last ``Iteration N`` seen before, or None), and those of ``element``,
    ``column``, ``row`` (lists of floats, one per param), ``block`` (per param a list of
    (xdimen, ydimen, pct)), ``regularization`` and ``loss_plus_regular`` (floats) the log holds.
    """
    lines = text.splitlines()
    records = []
    it = None
    cur = None
    i = 0
    while i < len(lines):
        line = lines[i]
        header = None
        for key, h in _HEADERS:
            if line.rstrip().endswith(h):
                header = key
                break
        if header is not None and i + 1 < len(lines):
            if cur is None or cur["iteration"] != it or header in cur:
                cur = {"iteration": it}
                records.append(cur)
            vals = _values(lines[i + 1])
            if header == "block":
                cur["block"] = [[(int(x), int(y), _num(p)) for x, y, p in _BLOCK.findall(v)]
                                for v in vals]
            else:
                cur[header] = [_num(v) for v in vals]
            i += 2
            continue
        m = _TOTAL.search(line)
        if m:
            if cur is None or cur["iteration"] != it or "regularization" in cur:
                cur = {"iteration": it}
                records.append(cur)
            cur["regularization"] = _num(m.group(1))
            cur["loss_plus_regular"] = _num(m.group(2))
        else:
            m = _ITER.search(line)
            if m:
                it = int(m.group(1))
        i += 1
    return records
