"""Size limits checked before caffepy allocates memory for a shape it was given.

A blob's shape comes from the net definition or the data (Input and DummyData dims,
num_output, pad, Tile's tiles, batch_size × the size of a record or an image), so a typo or a
damaged file can ask for terabytes. ``Blob.reshape`` calls :func:`check_blob` before it
allocates: a shape whose data and diff (float32, 8 bytes an element) would need more than the
limit is a :class:`BlobSizeError` naming the shape, the element count and the bytes; the net
builder adds the layer and the blob (``net.build.setup_layer``). Data sources check their
buffers with :func:`check_bytes` the same way.

The limit is the smallest of

* the memory of the machine (``os.sysconf``: physical pages × page size), or of the GPU when
  the CuPy backend is on;
* ``CAFFEPY_MAX_BLOB_BYTES`` (bytes; a ``K``, ``M``, ``G`` or ``T`` suffix multiplies by 1024,
  1024², ...);
* the ``max_blob_bytes`` a Net is being built with (``Net(..., max_blob_bytes=...)``).

While a Net is built, the blobs it allocates must also fit the machine's memory together.

Images are checked from their header before decoding: at most :func:`max_image_pixels`
pixels (``CAFFEPY_MAX_IMAGE_PIXELS``, default Pillow's decompression-bomb limit), and the
decoded bytes within the limit above.
"""
import contextlib
import os
import re
import threading

from .errors import NetError

ENV_MAX_BLOB_BYTES = "CAFFEPY_MAX_BLOB_BYTES"
ENV_MAX_IMAGE_PIXELS = "CAFFEPY_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 89478485        # Pillow's Image.MAX_IMAGE_PIXELS (its warning size)
BLOB_ITEMSIZE = 4                           # float32
BLOB_COPIES = 2                             # data and diff

_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_BYTES = re.compile(r"^\s*(\d+)\s*([KMGTkmgt]?)(?:[iI]?[bB])?\s*$")
_local = threading.local()
_machine = []


class BlobSizeError(NetError):
    """A blob shape that cannot or must not be allocated: a negative dimension, too many axes,
    or more bytes than the limit. ``shape``, ``count`` and ``nbytes`` say what was asked;
    ``blob`` is the Blob (the net builder finds its name and layer from it)."""

    def __init__(self, message, shape=(), count=0, nbytes=0, blob=None):
        super().__init__(message)
        self.shape = tuple(shape)
        self.count = count
        self.nbytes = nbytes
        self.blob = blob


def shape_str(shape):
    """``2 x 3 x 4`` (``(scalar)`` for no axes)."""
    return " x ".join(str(d) for d in shape) if len(shape) else "(scalar)"


def bytes_str(n):
    """``123456789 bytes (117.7 MiB)``."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return "%d bytes (%.1f %s)" % (n, n / size, unit)
    return "%d bytes" % n


def parse_bytes(text, what):
    """``text`` as a byte count (digits with an optional K/M/G/T suffix, "4G", "4GiB", "4GB");
    NetError naming ``what`` otherwise."""
    m = _BYTES.match(str(text))
    if m is None or int(m.group(1)) <= 0:
        raise NetError("%s must be a positive number of bytes (e.g. 4000000000 or 4G), got %r"
                       % (what, text))
    return int(m.group(1)) * _SUFFIXES[m.group(2).upper()]


def machine_memory():
    """(bytes, what): the physical memory of this machine (or of the GPU with CuPy)."""
    from . import backend
    xp = backend.xp()
    if getattr(xp, "__name__", "numpy") != "numpy":
        try:
            return int(xp.cuda.Device().mem_info[1]), "the GPU's memory"
        except Exception:
            pass
    if not _machine:
        try:
            _machine.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            _machine.append(0)
    return _machine[0], "this machine's physical memory"


def max_blob_bytes():
    """(limit in bytes, what sets it): the smallest of the machine's memory,
    CAFFEPY_MAX_BLOB_BYTES and the max_blob_bytes of the Net being built."""
    limit, what = machine_memory()
    if limit <= 0:
        limit, what = 1 << 62, "the address space"
    env = os.environ.get(ENV_MAX_BLOB_BYTES)
    if env:
        n = parse_bytes(env, ENV_MAX_BLOB_BYTES)
        if n < limit:
            limit, what = n, "the limit %s=%s" % (ENV_MAX_BLOB_BYTES, env)
    user = getattr(_local, "limit", None)
    if user is not None and user < limit:
        limit, what = user, "the Net's max_blob_bytes=%d" % user
    return limit, what


@contextlib.contextmanager
def blob_limit(nbytes):
    """Within the block (in this thread), no blob may need more than ``nbytes`` (None: no
    limit of its own), and the blobs allocated in it together no more than the machine's
    memory (the Net builds its blobs in such a block)."""
    if nbytes is not None:
        if isinstance(nbytes, bool) or not isinstance(nbytes, int):
            nbytes = parse_bytes(nbytes, "max_blob_bytes")
        elif nbytes <= 0:
            raise NetError("max_blob_bytes must be a positive number of bytes, got %d" % nbytes)
    old, old_total = getattr(_local, "limit", None), getattr(_local, "total", None)
    _local.limit = nbytes if nbytes is not None else old
    _local.total = 0
    try:
        yield
    finally:
        _local.limit, _local.total = old, old_total


def check_blob(shape, count, blob=None):
    """Raise BlobSizeError unless a blob of ``shape`` (``count`` elements) may be allocated."""
    nbytes = count * BLOB_ITEMSIZE * BLOB_COPIES
    limit, what = max_blob_bytes()
    if nbytes > limit:
        raise BlobSizeError("blob shape %s (%d elements) needs %s for its data and diff "
                            "(float32), more than %s: %s" % (shape_str(shape), count,
                                                             bytes_str(nbytes), what,
                                                             bytes_str(limit)),
                            shape, count, nbytes, blob)
    total = getattr(_local, "total", None)
    if total is not None:
        total += nbytes
        machine, what = machine_memory()
        if 0 < machine < total:
            raise BlobSizeError("blob shape %s (%d elements, %s for its data and diff) brings "
                                "the blobs of the net being built to %s, more than %s: %s"
                                % (shape_str(shape), count, bytes_str(nbytes), bytes_str(total),
                                   what, bytes_str(machine)), shape, count, nbytes, blob)
        _local.total = total


def shape_error(message, shape, blob=None):
    """A BlobSizeError for a shape that is not a shape (negative dimension, too many axes)."""
    return BlobSizeError(message, shape, 0, 0, blob)


def check_bytes(nbytes, what, error):
    """Raise ``error(message)`` unless ``nbytes`` for ``what`` fit the limit."""
    limit, why = max_blob_bytes()
    if nbytes > limit:
        raise error("%s needs %s, more than %s: %s" % (what, bytes_str(nbytes), why,
                                                       bytes_str(limit)))


def max_image_pixels():
    """The most pixels (height × width) an image may have to be decoded: CAFFEPY_MAX_IMAGE_PIXELS,
    else Pillow's decompression-bomb size."""
    env = os.environ.get(ENV_MAX_IMAGE_PIXELS)
    if env:
        return parse_bytes(env, ENV_MAX_IMAGE_PIXELS)
    return DEFAULT_MAX_IMAGE_PIXELS
