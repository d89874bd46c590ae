"""The one set of database writers (caffepy.data.db), used by write_db and by the dataset tools:
records read back in key order, a growing LMDB map, the backend names, the LevelDB extra."""
import sys

import numpy as np
import pytest

from caffepy.data import db as dbmod
from caffepy.data import (DataError, LMDBWriter, WrappingCursor, array_to_datum, datum_to_array,
                          open_db, parse_datum, write_db, write_lmdb)
from caffepy.errors import ToolError
from caffepy.proto import caffe_pb2
from caffepy.tools import dbio


def read_all(path, n):
    db = open_db(path, "lmdb")
    try:
        cur = WrappingCursor(db)
        return [cur.read() for _ in range(n)]
    finally:
        db.close()


def test_write_lmdb_grows_its_map_and_commits_in_batches(tmp_path, monkeypatch):
    commits = []
    real_write = LMDBWriter.write
    monkeypatch.setattr(LMDBWriter, "write",
                        lambda self, items: (commits.append(len(items)), real_write(self, items)))
    # 2500 records of 3×8×8 float32 (~800 bytes each, 2 MB) into a 64 KiB map: it doubles
    items = np.arange(2500 * 192, dtype=np.float32).reshape(2500, 3, 8, 8)
    path = str(tmp_path / "big_lmdb")
    write_lmdb(path, (("%05d" % i, array_to_datum(items[i], i % 10)) for i in range(2500)),
               map_size=1 << 16)
    assert commits == [1000, 1000, 500]
    records = read_all(path, 2501)
    assert [k for k, _ in records[:3]] == [b"00000", b"00001", b"00002"]
    assert records[2500][0] == b"00000"                      # the cursor wrapped around
    for i in (0, 1234, 2499):
        key, value = records[i]
        d = parse_datum(value, key)
        assert d.label == i % 10
        np.testing.assert_array_equal(datum_to_array(d), items[i])


def test_write_db_takes_bytes_str_keys_and_backend_names(tmp_path):
    d = caffe_pb2.Datum(channels=1, height=1, width=2, data=b"\x07\x09", label=3)
    path = str(tmp_path / "x")
    write_db(path, [("b", d.SerializeToString()), (b"a", d)], caffe_pb2.DataParameter.LMDB)
    (k0, v0), (k1, v1) = read_all(path, 2)
    assert (k0, k1) == (b"a", b"b") and v0 == v1 == d.SerializeToString()
    with pytest.raises(DataError, match=r"unknown database backend 'rocksdb' \(use lmdb or "
                                        r"leveldb\)"):
        write_db(str(tmp_path / "y"), [], "rocksdb")
    assert dbmod.backend_name("LMDB") == "lmdb"
    assert dbmod.backend_name(caffe_pb2.DataParameter.LEVELDB) == "leveldb"


def test_leveldb_writer_names_the_missing_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "plyvel", None)
    with pytest.raises(DataError) as e:
        write_db(str(tmp_path / "l"), [], "leveldb")
    assert str(e.value) == ("writing a LevelDB needs the optional plyvel package (the 'leveldb' "
                            "extra: pip install 'caffepy[leveldb]'); the lmdb backend needs "
                            "nothing extra")
    with pytest.raises(ToolError, match=r"^--backend leveldb needs the optional plyvel package"):
        dbio.new_db(str(tmp_path / "l"), "leveldb")


def test_the_tools_write_through_the_data_writers(tmp_path):
    w = dbio.new_db(str(tmp_path / "t_lmdb"), "LMDB")
    assert type(w) is LMDBWriter
    w.write([(b"k", b"v")])
    w.close()
    assert read_all(str(tmp_path / "t_lmdb"), 1) == [(b"k", b"v")]
    with pytest.raises(ToolError, match="already exists"):
        dbio.new_db(str(tmp_path / "t_lmdb"), "lmdb")
