"""Reading and writing Caffe's protobuf files: text prototxt and binary messages.

Errors name the file, the line and the field, so a typo in a prototxt reads like a
compiler message rather than a traceback.
"""
import os
import re

from google.protobuf.message import DecodeError

from ..atomic import atomic_path, atomic_write
from ..errors import ProtoError


def _text_format():
    """google.protobuf.text_format, imported on the first prototxt read or write (it is the
    largest part of protobuf's import and a training run from binary files never needs it)."""
    from google.protobuf import text_format
    return text_format


# -- text format --------------------------------------------------------------------

# text_format's message for a non-repeated field given twice
_TWICE = re.compile(r'Message type "([\w.]+)" should not have multiple "(\w+)" fields\.')


def parse_text(text, message, filename="<string>"):
    """Parse protobuf text into ``message``; errors say file:line:column and what is wrong.

    As Caffe's parser (protobuf's C++ TextFormat::Parse), a non-repeated field given twice in
    one message, a scalar or a message, is an error at its second occurrence, never a silent
    overwrite or merge; repeated fields take any number of entries. ``text`` given as bytes
    must be UTF-8."""
    text_format = _text_format()
    if isinstance(text, (bytes, bytearray)):
        text = _decode_text(bytes(text), message, filename)
    try:
        text_format.Parse(text, message, allow_unknown_extension=False)
    except text_format.ParseError as e:
        line = getattr(e, "GetLine", lambda: None)()
        col = getattr(e, "GetColumn", lambda: None)()
        msg = str(e)
        # ParseError's text starts with "line:col : " when it knows the place.
        if line is not None and msg.startswith("%s:%s" % (line, col)):
            msg = msg.split(":", 2)[2].strip()
        twice = _TWICE.match(msg)
        if twice:
            msg = ("non-repeated field '%s' of %s is given more than once (a field that is "
                   "not repeated takes one value)" % (twice.group(2), twice.group(1)))
        where = filename if line is None else "%s:%s:%s" % (filename, line, col)
        raise ProtoError("%s: cannot parse %s: %s"
                         % (where, message.DESCRIPTOR.name, msg)) from None
    return message


def read_bytes(path, message):
    """The bytes of the file ``path`` that should hold a ``message``; ProtoError names it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ProtoError("cannot read %s file '%s': %s"
                         % (message.DESCRIPTOR.name, path, e.strerror or e)) from None


def _decode_text(data, message, path):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ProtoError("%s: not a text %s: byte %d is not UTF-8 (byte 0x%02x at byte offset "
                         "%d, line %d; a binary file, or text in another encoding?)"
                         % (path, message.DESCRIPTOR.name, e.start, data[e.start], e.start,
                            line)) from None


def read_text(path, message):
    """Parse the text (prototxt) file ``path`` into ``message``."""
    return parse_text(_decode_text(read_bytes(path, message), message, path), message,
                      filename=path)


def message_text(message):
    """``message`` in protobuf's text format (as a prototxt shows it)."""
    return _text_format().MessageToString(message)


def write_text(message, path):
    atomic_write(path, message_text(message).encode("utf-8"))


# -- binary format ------------------------------------------------------------------

def parse_binary(data, message, filename="<bytes>"):
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ProtoError("%s: not a valid binary %s (truncated or corrupt file?): %s"
                         % (filename, message.DESCRIPTOR.name, e)) from None
    return message


def read_binary(path, message):
    """Parse the binary file ``path`` (a .caffemodel, .binaryproto, .solverstate) into
    ``message``."""
    return parse_binary(read_bytes(path, message), message, filename=path)


def write_binary(message, path):
    atomic_write(path, message.SerializeToString())


def write_serialized(chunks, path):
    """Write a message already serialized as :class:`~.wire.Chunks` (atomically), one buffer
    after another, so that its value runs are never joined in memory."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        chunks.write_to(f)


# -- either -------------------------------------------------------------------------

TEXT_EXTENSIONS = (".prototxt", ".pbtxt", ".prototext", ".txt")
BINARY_EXTENSIONS = (".caffemodel", ".binaryproto", ".solverstate", ".pb")

# A byte that never stands in a prototxt: a C0 control other than whitespace, or DEL.
_NON_TEXT = re.compile(rb"[\x00-\x08\x0e-\x1f\x7f]")


def is_text_proto(data, path=""):
    """Whether a proto file is text: by its extension when it is a known one (.prototxt,
    .pbtxt, .txt are text; .caffemodel, .binaryproto, .solverstate, .pb binary), otherwise by
    its content: UTF-8 without control bytes is text. (Binary protobuf is field tags, lengths
    and raw numbers: control bytes and bytes that are not UTF-8 come within its first few.)"""
    ext = os.path.splitext(str(path))[1].lower()
    if ext in TEXT_EXTENSIONS:
        return True
    if ext in BINARY_EXTENSIONS:
        return False
    if _NON_TEXT.search(data):
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def read_proto(path, message):
    """Parse ``path`` into ``message`` as text or binary, decided once by the file's extension
    or content (:func:`is_text_proto`); a file that does not parse in that format raises
    ProtoError naming the file (and, for text, the line and column)."""
    data = read_bytes(path, message)
    if is_text_proto(data, path):
        return parse_text(_decode_text(data, message, path), message, filename=path)
    return parse_binary(data, message, filename=path)
