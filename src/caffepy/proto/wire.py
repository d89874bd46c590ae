"""Protobuf's wire format, as far as Caffe's large messages need it.

A .caffemodel or .solverstate is almost all float runs: each BlobProto's ``data`` (and
``diff``) is one packed field, a key, a length and then the values as little-endian float32.
Building such a message through the protobuf runtime copies every value through a Python
float; here the packed runs are written straight from the arrays' memory, and the small rest
of each message (layer settings, shapes, names) is still serialized by protobuf, so the bytes
are the ones protobuf writes for the same message (known fields in field-number order).

Reading goes the other way: :func:`scan` walks one message level of a serialized buffer
without copying it, so a packed float run can be read with ``np.frombuffer``. Anything this
module does not expect (groups, truncated data) raises :class:`WireError`, and the callers
then hand the whole buffer to protobuf, which reads or rejects it as Caffe's reader would.
"""
import numpy as np

VARINT, I64, LEN, I32 = 0, 1, 2, 5


class WireError(Exception):
    """Bytes this module does not read (callers fall back to protobuf's parser)."""


def encode_varint(n):
    """Base-128 varint; a negative number as its 64-bit two's complement (10 bytes)."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field_key(number, wire_type):
    return encode_varint(number << 3 | wire_type)


def decode_varint(buf, pos, end):
    """(value, position after it) of the varint at ``buf[pos]``."""
    result = shift = 0
    while pos < end and shift < 70:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
    raise WireError("truncated or overlong varint")


def scan(buf, start=0, end=None):
    """The fields of the message at ``buf[start:end]``, in order, as
    ``(number, wire_type, value, field_start, field_end)``: ``value`` is the integer of a
    varint, else the ``(start, end)`` of the field's payload; ``field_start``/``field_end``
    span the whole field, key included."""
    end = len(buf) if end is None else end
    pos = start
    while pos < end:
        field_start = pos
        key, pos = decode_varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire_type == VARINT:
            value, pos = decode_varint(buf, pos, end)
        elif wire_type == LEN:
            size, pos = decode_varint(buf, pos, end)
            value = (pos, pos + size)
            pos += size
        elif wire_type == I32:
            value = (pos, pos + 4)
            pos += 4
        elif wire_type == I64:
            value = (pos, pos + 8)
            pos += 8
        else:
            raise WireError("wire type %d" % wire_type)
        if pos > end:
            raise WireError("field %d runs past the end of its message" % number)
        yield number, wire_type, value, field_start, pos


class Chunks:
    """A serialized message as a list of buffers (bytes, or byte views of arrays), so that
    large value runs are written to a file without being joined into one bytes object."""

    __slots__ = ("parts", "size")

    def __init__(self, parts=()):
        self.parts = []
        self.size = 0
        for p in parts:
            self.add(p)

    def add(self, part):
        self.parts.append(part)
        self.size += len(part)
        return self

    def extend(self, chunks):
        self.parts.extend(chunks.parts)
        self.size += chunks.size
        return self

    def add_message(self, number, chunks):
        """Append field ``number`` holding the message ``chunks`` (length-delimited)."""
        self.add(field_key(number, LEN) + encode_varint(chunks.size))
        return self.extend(chunks)

    def add_packed(self, number, values):
        """Append the packed repeated field ``number`` holding the contiguous little-endian
        array ``values`` (nothing for an empty array, as protobuf writes it)."""
        if values.size:
            raw = memoryview(values.reshape(-1).view(np.uint8))
            self.add(field_key(number, LEN) + encode_varint(raw.nbytes))
            self.add(raw)
        return self

    def tobytes(self):
        return b"".join(self.parts)

    def write_to(self, f):
        for p in self.parts:
            f.write(p)


def splice(serialized, inserts):
    """Chunks of the message ``serialized`` (bytes protobuf wrote, fields in field-number
    order) with the fields of ``inserts`` ({field number: Chunks of whole fields}) added where
    protobuf would have put them: before the first field of a higher number."""
    out = Chunks()
    pending = sorted(inserts.items())
    pos = 0
    for number, _, _, field_start, _ in scan(serialized):
        while pending and number > pending[0][0]:
            out.add(serialized[pos:field_start])
            out.extend(pending.pop(0)[1])
            pos = field_start
    out.add(serialized[pos:])
    for _, chunks in pending:
        out.extend(chunks)
    return out
