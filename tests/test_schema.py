"""caffepy's schema is generated from the field table in the repository (tools/), and the
committed caffe.proto / caffe_pb2 agree with that table field by field."""
import csv
import importlib.util
import os

from google.protobuf import descriptor

from caffepy.proto import caffe_pb2
from caffepy.proto.upgrade import is_repeated

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _is_packed(field):
    """FieldDescriptor.is_packed, or on protobuf releases without it, the packed option."""
    try:
        return field.is_packed
    except AttributeError:
        return field.GetOptions().packed
TABLE = os.path.join(ROOT, "tools", "caffe-proto-fields.tsv")
PROTO = os.path.join(ROOT, "src", "caffepy", "proto", "caffe.proto")

_TYPES = {"double": descriptor.FieldDescriptor.TYPE_DOUBLE,
          "float": descriptor.FieldDescriptor.TYPE_FLOAT,
          "int32": descriptor.FieldDescriptor.TYPE_INT32,
          "int64": descriptor.FieldDescriptor.TYPE_INT64,
          "uint32": descriptor.FieldDescriptor.TYPE_UINT32,
          "uint64": descriptor.FieldDescriptor.TYPE_UINT64,
          "bool": descriptor.FieldDescriptor.TYPE_BOOL,
          "string": descriptor.FieldDescriptor.TYPE_STRING,
          "bytes": descriptor.FieldDescriptor.TYPE_BYTES,
          "message": descriptor.FieldDescriptor.TYPE_MESSAGE,
          "enum": descriptor.FieldDescriptor.TYPE_ENUM}


def _gen_proto():
    spec = importlib.util.spec_from_file_location("gen_proto", os.path.join(ROOT, "tools",
                                                                           "gen_proto.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows():
    with open(TABLE, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_committed_caffe_proto_is_generated_from_the_table():
    gen = _gen_proto()
    with open(PROTO) as f:
        assert f.read() == gen.emit(gen.read_table(TABLE)), \
            "caffe.proto is stale: run python tools/gen_proto.py"


def _message(name):
    parts = name.split(".")
    d = caffe_pb2.DESCRIPTOR.message_types_by_name.get(parts[0])
    for p in parts[1:]:
        if d is None:
            return None
        d = d.nested_types_by_name.get(p)
    return d


def _enum(name):
    parts = name.split(".")
    if len(parts) == 1:
        return caffe_pb2.DESCRIPTOR.enum_types_by_name[name]
    return _message(".".join(parts[:-1])).enum_types_by_name[parts[-1]]


def test_caffe_pb2_numbers_and_types_match_the_table():
    rows = _rows()
    assert len(rows) > 500
    checked = 0
    for row in rows:
        if row["label"] == "enum_value":
            assert _enum(row["message"]).values_by_name[row["field"]].number == int(row["number"])
        else:
            msg = _message(row["message"])
            assert msg is not None, row["message"]
            f = msg.fields_by_name[row["field"]]
            assert f.number == int(row["number"]), (row["message"], row["field"])
            assert f.type == _TYPES.get(row["type"], f.type), (row["message"], row["field"])
            assert is_repeated(f) == (row["label"] == "repeated"), (row["message"], row["field"])
            assert _is_packed(f) == (row["options"] == "packed"), (row["message"], row["field"])
        checked += 1
    assert checked == len(rows)
