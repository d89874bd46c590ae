"""Reading and writing Caffe's protobuf files: text prototxt and binary messages.

Errors name the file, the line and the field, so a typo in a prototxt reads like a
compiler message rather than a traceback.
"""
import os

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from . import caffe_pb2
from ..atomic import atomic_write  # noqa: F401
from ..errors import ProtoError  # noqa: F401


# -- text format --------------------------------------------------------------------

def parse_text(text, message, filename="<string>"):
    """Parse protobuf text into ``message``; errors say file:line:column and what is wrong."""
    try:
        text_format.Merge(text, message, allow_unknown_extension=False)
    except text_format.ParseError as e:
        line = getattr(e, "GetLine", lambda: None)()
        col = getattr(e, "GetColumn", lambda: None)()
        msg = str(e)
        # ParseError's text starts with "line:col : " when it knows the place.
        if line is not None and msg.startswith("%s:%s" % (line, col)):
            msg = msg.split(":", 2)[2].strip()
        where = filename if line is None else "%s:%s:%s" % (filename, line, col)
        raise ProtoError("%s: cannot parse %s: %s" % (where, message.DESCRIPTOR.name, msg)) from None
    return message


def read_text(path, message):
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ProtoError("cannot read %s file '%s': %s"
                         % (message.DESCRIPTOR.name, path, e.strerror or e)) from None
    return parse_text(text, message, filename=path)


def write_text(message, path):
    atomic_write(path, text_format.MessageToString(message).encode("utf-8"))


# -- binary format ------------------------------------------------------------------

def parse_binary(data, message, filename="<bytes>"):
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ProtoError("%s: not a valid binary %s (truncated or corrupt file?): %s"
                         % (filename, message.DESCRIPTOR.name, e)) from None
    return message


def read_binary(path, message):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ProtoError("cannot read %s file '%s': %s"
                         % (message.DESCRIPTOR.name, path, e.strerror or e)) from None
    return parse_binary(data, message, filename=path)


def write_binary(message, path):
    atomic_write(path, message.SerializeToString())


def read_proto(path, message):
    """Binary or text, whichever the file holds (binary first, like Caffe's tools)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        message.ParseFromString(data)
        return message
    except Exception:
        message.Clear()
    return parse_text(data.decode("utf-8", errors="replace"), message, filename=path)
