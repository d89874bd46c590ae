"""Caffe's ``convert_imageset``: a folder of images and a list file -> an LMDB (or LevelDB)
of Datum records.

    caffepy convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME
    caffepy convert_imageset --resize_height=256 --resize_width=256 --shuffle \\
        data/ilsvrc12/train/ data/ilsvrc12/train.txt ilsvrc12_train_lmdb

The list file holds one ``relpath label`` per line, split at the *last* space (so paths may
contain spaces); each image is read from ``ROOTFOLDER + relpath``.  Records are stored under
the key ``%08d_{relpath}`` (the position in the -- possibly shuffled -- list) and committed
every 1000 records, as tools/convert_imageset.cpp does.

* raw (the default): Datum {channels, height, width, data = the uint8 pixels in C×H×W planar
  order, BGR for colour images (OpenCV's order), label, encoded: false}.  Images are read in
  colour (3 channels, grey images are expanded) or, with --gray, as 1 channel; with both
  --resize_height and --resize_width > 0 they are resized with OpenCV's bilinear rule
  (``caffepy.data.image``).
* --encoded (or --encode_type): Datum {data = image file bytes, label, encoded: true}.  The
  file's own bytes are stored when its extension matches the encoding (``jpeg`` matches
  ``jpg``) and no resize is asked for -- as in Caffe, even with --gray, since the reader
  decides the channels; otherwise the decoded (resized, grey) pixels are re-encoded
  (JPEG at quality 95, OpenCV's default).  --encode_type "" guesses the encoding from each
  file's extension; a file without an extension is stored as it is (or as PNG when it has
  to be re-encoded).

Differences from Caffe, on purpose:

* An image that cannot be read is skipped with a warning naming the file and its list-file
  line (Caffe logs and skips it too); the number skipped is reported at the end.  The
  conversion still succeeds (exit status 0), as Caffe's does.
* A list line without a label, or with a label that is not an integer, is a hard error
  naming ``LISTFILE:LINE`` before anything is written (Caffe silently reads label 0 or
  takes the whole line as the path).  Blank lines are ignored.  An empty list is an error.
* --shuffle is reproducible: the order comes from --shuffle_seed (default 0; -1 draws a
  fresh seed).  Caffe shuffles with an unseeded generator, so no order matches Caffe's.
* --check_size compares the decoded images' channels × height × width (also for encoded
  records, where Caffe's check compares against an unset size and always fails).
* A failure while writing removes the partly written database.
"""
import concurrent.futures
import io
import logging
import os

import numpy as np

from ..data.datum import array_to_datum, encoded_datum
from . import ToolError
from .dbio import check_backend, discard, new_db, progress_bar

log = logging.getLogger("caffepy")

COMMIT_EVERY = 1000
_CHUNK = 256            # images decoded in parallel at a time

# Image encodings Pillow can write, by extension (cv::imencode's "." + encoding).
PIL_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "jpe": "JPEG", "png": "PNG", "bmp": "BMP",
               "dib": "BMP", "tif": "TIFF", "tiff": "TIFF", "ppm": "PPM", "pgm": "PPM",
               "pbm": "PPM", "pnm": "PPM", "webp": "WEBP"}


class _Unreadable(Exception):
    pass


def _unreadable(msg, *args):
    return _Unreadable(msg % args if args else msg)


# -- the list file -----------------------------------------------------------------------

def parse_list_file(path):
    """The ``relpath label`` lines of ``path`` -> [(relpath, label, line number)]."""
    try:
        with open(path, "r", encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except FileNotFoundError:
        raise ToolError("cannot open the list file '%s': no such file" % path) from None
    except OSError as e:
        raise ToolError("cannot open the list file '%s': %s" % (path, e.strerror or e)) from None
    lines = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.rstrip()
        if not line.strip():
            continue
        pos = max(line.rfind(" "), line.rfind("\t"))
        if pos < 0:
            raise ToolError("%s:%d: no label in '%s' (each line of the list is 'relpath label', "
                            "split at the last space)" % (path, lineno, line))
        rel, label = line[:pos].rstrip(), line[pos + 1:]
        try:
            label = int(label)
        except ValueError:
            raise ToolError("%s:%d: the label '%s' is not an integer (each line of the list is "
                            "'relpath label', split at the last space)"
                            % (path, lineno, label)) from None
        if not -2 ** 31 <= label < 2 ** 31:
            raise ToolError("%s:%d: the label %d does not fit in an int32" % (path, lineno, label))
        if not rel:
            raise ToolError("%s:%d: no image path before the label" % (path, lineno))
        lines.append((rel, label, lineno))
    if not lines:
        raise ToolError("the list file '%s' names no images" % path)
    return lines


def image_path(root_folder, rel):
    """Caffe reads ``root_folder + relpath``; a root folder given without its trailing '/'
    gets one when it is a directory."""
    if root_folder and not root_folder.endswith(("/", os.sep)) and os.path.isdir(root_folder):
        return root_folder + "/" + rel
    return root_folder + rel


def file_extension(fn):
    """The lower-case text after the last '.', or None."""
    p = fn.rfind(".")
    if p < 0 or "/" in fn[p:]:
        return None
    return fn[p + 1:].lower()


def match_ext(fn, encoding):
    """matchExt: ``fn``'s extension is ``encoding`` (``jpeg`` counts as ``jpg``)."""
    ext = file_extension(fn)
    en = encoding.lower()
    return ext == en or (en == "jpg" and ext == "jpeg")


def encode_image(img, encoding):
    """A C×H×W uint8 image (BGR or grey) -> file bytes in ``encoding`` (cv::imencode)."""
    from PIL import Image
    fmt = PIL_FORMATS.get(encoding.lower())
    if fmt is None:
        raise ToolError("cannot encode images as '.%s' (caffepy writes: %s)"
                        % (encoding, ", ".join(sorted(PIL_FORMATS))))
    if img.shape[0] == 1:
        pil = Image.fromarray(np.ascontiguousarray(img[0]))          # L
    else:
        pil = Image.fromarray(np.ascontiguousarray(img[::-1].transpose(1, 2, 0)))  # RGB
    buf = io.BytesIO()
    opts = {"quality": 95} if fmt == "JPEG" else {"compress_level": 1} if fmt == "PNG" else {}
    pil.save(buf, format=fmt, **opts)
    return buf.getvalue()


# -- one image ---------------------------------------------------------------------------

class _Converter:
    def __init__(self, root_folder, list_file, is_color, resize_height, resize_width, encoded,
                 encode_type):
        self.root = root_folder
        self.list_file = list_file
        self.is_color = is_color
        self.rh, self.rw = resize_height, resize_width
        self.encoded = encoded
        self.encode_type = encode_type

    def encoding_of(self, rel):
        """The encoding of this record: the given one, or the file's extension; "" when the
        name has none (the file is stored as it is)."""
        if self.encode_type:
            return self.encode_type
        return file_extension(rel) or ""

    def __call__(self, item):
        """(shape, serialized Datum) or (None, reason) for an unreadable image."""
        from ..data.image import read_image
        rel, label, lineno = item
        path = image_path(self.root, rel)
        where = "file %s (line %d of %s)" % (path, lineno, self.list_file)
        try:
            img = read_image(path, self.is_color, self.rh, self.rw, error=_unreadable,
                             where=where)
        except _Unreadable as e:
            return None, str(e)
        if self.encoded:
            enc = self.encoding_of(rel)
            if not self.rh and not self.rw and (not enc or match_ext(path, enc)):
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError as e:
                    return None, "could not load %s: %s" % (where, e.strerror or e)
            else:
                data = encode_image(img, enc or "png")
            datum = encoded_datum(data, label)
        else:
            datum = array_to_datum(img, label)
            datum.encoded = False               # as Caffe's CVMatToDatum writes it
        return img.shape, datum.SerializeToString()


# -- the conversion -----------------------------------------------------------------------

def convert_imageset(root_folder, list_file, db_path, gray=False, shuffle=False, backend="lmdb",
                     resize_width=0, resize_height=0, check_size=False, encoded=False,
                     encode_type="", shuffle_seed=0, progress=True, threads=None,
                     commit_every=COMMIT_EVERY):
    """convert_imageset.cpp. Returns (records written, images skipped as unreadable)."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise ToolError("convert_imageset needs Pillow to read images, the optional 'images' "
                        "extra: pip install 'caffepy[images]'") from None
    backend = check_backend(backend)
    lines = parse_list_file(list_file)
    if shuffle:
        log.info("Shuffling data")
        seed = None if shuffle_seed is None or int(shuffle_seed) < 0 else int(shuffle_seed)
        order = np.random.default_rng(seed).permutation(len(lines))
        lines = [lines[i] for i in order]
    log.info("A total of %d images.", len(lines))
    encode_type = (encode_type or "").lower().lstrip(".")
    if encode_type and not encoded:
        log.info("encode_type specified, assuming encoded=true.")
        encoded = True
    if encode_type and encode_type not in PIL_FORMATS:
        raise ToolError("--encode_type %s: caffepy cannot encode images as '.%s' (it writes: %s)"
                        % (encode_type, encode_type, ", ".join(sorted(PIL_FORMATS))))
    resize_height, resize_width = max(0, int(resize_height)), max(0, int(resize_width))
    if bool(resize_height) != bool(resize_width):
        log.warning("Only one of --resize_height (%d) and --resize_width (%d) is set: images are "
                    "resized only when both are positive, so they keep their size",
                    resize_height, resize_width)
    conv = _Converter(root_folder, list_file, not gray, resize_height, resize_width, encoded,
                      encode_type)
    if encoded and not encode_type:
        need_reencode = bool(resize_height or resize_width)
        for rel, _, lineno in lines:
            ext = file_extension(rel)
            if ext is None:
                log.warning("Failed to guess the encoding of '%s' (line %d of %s): it has no "
                            "extension; %s", rel, lineno, list_file,
                            "it is re-encoded as PNG" if need_reencode
                            else "its file bytes are stored as they are")
            elif need_reencode and ext not in PIL_FORMATS:
                raise ToolError("%s:%d: '%s' must be re-encoded (it is resized) but caffepy cannot "
                                "write '.%s' files; give --encode_type (e.g. png or jpg)"
                                % (list_file, lineno, rel, ext))

    writer = new_db(db_path, backend, tool="convert_imageset")
    bar = progress_bar(len(lines), os.path.basename(os.path.normpath(db_path)), progress)
    workers = threads or min(8, os.cpu_count() or 1)
    count = skipped = 0
    first_shape = None
    batch = []
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(lines), _CHUNK):
                chunk = lines[start:start + _CHUNK]
                for j, (shape, value) in enumerate(pool.map(conv, chunk)):
                    line_id = start + j
                    rel, _, lineno = chunk[j]
                    if shape is None:
                        skipped += 1
                        log.warning("%s; skipping it", value)
                        if bar is not None:
                            bar.update(1)
                            bar.set_postfix(skipped=skipped, refresh=False)
                        continue
                    if check_size:
                        if first_shape is None:
                            first_shape = shape
                        elif shape != first_shape:
                            raise ToolError(
                                "%s:%d: image '%s' is %s (channels x height x width) but the "
                                "first image is %s; --check_size needs all images the same size "
                                "(set --resize_height/--resize_width to make them so)"
                                % (list_file, lineno, rel, " x ".join(map(str, shape)),
                                   " x ".join(map(str, first_shape))))
                    key = ("%08d_%s" % (line_id, rel)).encode("utf-8", "surrogateescape")
                    batch.append((key, value))
                    count += 1
                    if bar is not None:
                        bar.update(1)
                    if count % commit_every == 0:
                        writer.write(batch)
                        batch = []
                        if bar is None:
                            log.info("Processed %d files.", count)
        if batch or count == 0:
            writer.write(batch)
        writer.close()
    except BaseException:
        discard(writer)
        raise
    finally:
        if bar is not None:
            bar.close()
    if count % commit_every != 0 or bar is not None or count == 0:
        log.info("Processed %d files.", count)
    if skipped:
        log.warning("Skipped %d of %d images that could not be read (see the warnings above); "
                    "%s holds the other %d.", skipped, len(lines), db_path, count)
    return count, skipped
