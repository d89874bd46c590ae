"""Damaged data sources give caffepy errors naming the layer, the file and the record, never a
dead process: LMDBs written by caffepy's own writer and then truncated, overwritten at the end
or in one page (the lmdb library itself dies with SIGBUS or a failed assertion on several of
these), bad Datum records, LevelDB (when plyvel is installed) and HDF5 files.

The damaged databases are read in a child process (tests/robust_runner.py), so a crash fails
the test instead of the run."""
import os
import shutil
import struct

import numpy as np
import pytest

import caffepy
from caffepy.backend import to_numpy
from caffepy.data.db import WrappingCursor, open_db, write_lmdb
from caffepy.data.datum import array_to_datum
from caffepy.errors import DataError, NetError

from robust_runner import clean_error, run_cases

N_RECORDS = 400
PSIZE = 4096


def items():
    return np.random.default_rng(0).integers(0, 256, (N_RECORDS, 3, 8, 8), dtype=np.uint8)


def key(i):
    return "%08d" % i


def write_db(path, records=None):
    data = items()
    if records is None:
        records = [(key(i), array_to_datum(data[i], i % 10)) for i in range(N_RECORDS)]
    write_lmdb(str(path), records)
    return str(path)


NET = """
name: "robust"
layer {{ name: "data" type: "Data" top: "data" top: "label"
        data_param {{ source: "{src}" backend: LMDB batch_size: 16 prefetch: {prefetch} }} }}
"""


def net_file(tmp, name, db, prefetch=2):
    path = os.path.join(str(tmp), name + ".prototxt")
    with open(path, "w") as f:
        f.write(NET.format(src=db, prefetch=prefetch))
    return path


def pages(db):
    """[(pgno, flags, lower, upper)] of the data file's pages, from their headers."""
    raw = open(os.path.join(db, "data.mdb"), "rb").read()
    out = []
    for p in range(len(raw) // PSIZE):
        pgno, _, flags, lower, upper = struct.unpack_from("<QHHHH", raw, p * PSIZE)
        out.append((p, flags, lower, upper))
    return out


def last_pgno(db):
    raw = open(os.path.join(db, "data.mdb"), "rb").read(2 * PSIZE)
    metas = [struct.unpack_from("<QQ", raw, off + 16 + 120) for off in (0, PSIZE)]
    return max(metas, key=lambda m: m[1])[0]           # (mm_last_pg, mm_txnid) of the newest


def patch(db, offset, data):
    with open(os.path.join(db, "data.mdb"), "r+b") as f:
        f.seek(offset)
        f.write(data)


def middle_leaf(db):
    leaves = [p for p, flags, _, _ in pages(db) if flags == 0x02]
    assert len(leaves) > 10
    return leaves[len(leaves) // 2]


@pytest.fixture(scope="module")
def lmdb_reports(tmp_path_factory):
    """Every damaged LMDB case, run in one child process."""
    tmp = tmp_path_factory.mktemp("robust_lmdb")
    good = write_db(tmp / "good")
    size = os.path.getsize(os.path.join(good, "data.mdb"))
    last = last_pgno(good)
    cases, expect = [], {}

    def damaged(name):
        path = str(tmp / name)
        shutil.copytree(good, path)
        return path

    def case(name, db, code=None, prefetch=2, **facts):
        nf = net_file(tmp, name, db, prefetch)
        cases.append({"name": name, "code": code or "result = run_net(%r, 60)" % nf,
                      "tmp": str(tmp)})
        expect[name] = dict(facts, db=db, net=nf)

    db = damaged("truncated")
    os.truncate(os.path.join(db, "data.mdb"), size * 6 // 10)
    case("truncated", db, need=(last + 1) * PSIZE, holds=size * 6 // 10)

    db = damaged("truncated_to_header")
    os.truncate(os.path.join(db, "data.mdb"), 100)
    case("truncated_to_header", db)

    db = damaged("random_tail")
    rng = np.random.default_rng(7)
    patch(db, size - size // 3, rng.bytes(size // 3))
    case("random_tail", db)

    db = damaged("random_page")
    page = middle_leaf(db)
    patch(db, page * PSIZE, np.random.default_rng(8).bytes(PSIZE))
    case("random_page", db, page=page)

    db = damaged("leaf_flagged_branch")     # the lmdb library aborts: Assertion 'IS_LEAF(mp)'
    page = middle_leaf(db)
    patch(db, page * PSIZE + 10, struct.pack("<H", 0x01))
    case("leaf_flagged_branch", db, page=page)

    db = damaged("node_offset")
    page = middle_leaf(db)
    patch(db, page * PSIZE + 16, struct.pack("<H", 0xFFF0))
    case("node_offset", db, page=page)

    db = damaged("value_size")              # an entry claiming a 1 MB value inside a page
    page = middle_leaf(db)
    raw = open(os.path.join(db, "data.mdb"), "rb").read()
    node = struct.unpack_from("<H", raw, page * PSIZE + 16)[0]
    patch(db, page * PSIZE + node, struct.pack("<HH", 0, 16))
    case("value_size", db, page=page, offset=node)

    # truncated while the net reads it (no read-ahead: the pages past the cut are unread)
    db = damaged("truncated_while_reading")
    nf = net_file(tmp, "truncated_while_reading", db, prefetch=0)
    code = ("import caffepy, os\n"
            "net = caffepy.Net(%r, caffepy.TRAIN)\n"
            "net.forward()\n"
            "os.truncate(%r, %d)\n"
            "for _ in range(40):\n"
            "    net.forward()\n" % (nf, os.path.join(db, "data.mdb"), size // 2))
    case("truncated_while_reading", db, code=code, prefetch=0)

    # the lmdb package's reader (files in layouts caffepy does not read itself): its size check
    db = damaged("lmdb_package_truncated")
    os.truncate(os.path.join(db, "data.mdb"), size // 2)
    nf = net_file(tmp, "lmdb_package_truncated", db)
    code = ("import caffepy.data.db as d\n"
            "def unsupported(*args):\n"
            "    raise d._Unsupported('test')\n"
            "d._LMDBFile = unsupported\n"
            "result = run_net(%r, 60)\n" % nf)
    case("lmdb_package_truncated", db, code=code, need=(last + 1) * PSIZE, holds=size // 2)

    # Datum records: unparseable bytes, a size that does not match its dims, another shape
    data = items()
    records = [(key(i), array_to_datum(data[i], i % 10)) for i in range(N_RECORDS)]
    records[5] = (key(5), b"\xff\xff\xff\xff")
    db = write_db(tmp / "bad_datum", records)
    case("bad_datum", db)
    records = [(key(i), array_to_datum(data[i], i % 10)) for i in range(N_RECORDS)]
    records[7][1].data = bytes(100)
    db = write_db(tmp / "datum_size", records)
    case("datum_size", db)
    records = [(key(i), array_to_datum(data[i], i % 10)) for i in range(N_RECORDS)]
    records[20] = (key(20), array_to_datum(np.zeros((3, 9, 9), np.uint8), 0))
    db = write_db(tmp / "datum_shape", records)
    case("datum_shape", db)

    return run_cases(cases, tmp), expect


def _names(msg, facts):
    assert "Layer 'data' (Data)" in msg
    assert "'%s'" % facts["db"] in msg


def test_truncated_lmdb_is_refused_at_open_with_the_sizes(lmdb_reports):
    reports, expect = lmdb_reports
    msg = clean_error(reports["truncated"])
    f = expect["truncated"]
    _names(msg, f)
    assert ("its last page is %d with 4096-byte pages, so it must hold at least %d bytes, but "
            "it holds %d" % (f["need"] // PSIZE - 1, f["need"], f["holds"])) in msg
    assert "NetError" in reports["truncated"]["mro"]       # raised while the net is built


def test_lmdb_cut_inside_its_meta_pages_is_not_an_lmdb(lmdb_reports):
    reports, expect = lmdb_reports
    msg = clean_error(reports["truncated_to_header"])
    _names(msg, expect["truncated_to_header"])
    assert "not an LMDB data file (no valid meta page at its start; the file holds 100 " \
           "bytes)" in msg


def test_random_tail_and_random_page_are_damaged_pages(lmdb_reports):
    reports, expect = lmdb_reports
    msg = clean_error(reports["random_tail"])
    _names(msg, expect["random_tail"])
    assert "is damaged" in msg and "(reading the record after key '" in msg
    msg = clean_error(reports["random_page"])
    _names(msg, expect["random_page"])
    assert "page %d is damaged (it reads as page " % expect["random_page"]["page"] in msg
    assert "(reading the record after key '" in msg


def test_a_leaf_page_flagged_as_a_branch_is_an_error_not_an_abort(lmdb_reports):
    reports, expect = lmdb_reports
    page = expect["leaf_flagged_branch"]["page"]
    msg = clean_error(reports["leaf_flagged_branch"])
    _names(msg, expect["leaf_flagged_branch"])
    assert ("page %d is damaged (it reads as page %d with flags 0x1; a leaf page was expected)"
            % (page, page)) in msg


def test_offsets_and_sizes_inside_a_page_are_checked(lmdb_reports):
    reports, expect = lmdb_reports
    f = expect["node_offset"]
    msg = clean_error(reports["node_offset"])
    _names(msg, f)
    assert "page %d is damaged (an entry at offset 65520, outside " % f["page"] in msg
    f = expect["value_size"]
    msg = clean_error(reports["value_size"])
    _names(msg, f)
    # 8 bytes of key, then a value of 16 << 16 = 1048576 bytes: past the 4096-byte page
    assert ("page %d is damaged (an entry of 8 + 1048576 bytes at offset %d runs past the page)"
            % (f["page"], f["offset"])) in msg


def test_a_file_cut_while_it_is_read_is_an_error_in_forward(lmdb_reports):
    reports, expect = lmdb_reports
    msg = clean_error(reports["truncated_while_reading"])
    _names(msg, expect["truncated_while_reading"])
    assert "the file ends inside page" in msg
    assert "DataError" in reports["truncated_while_reading"]["mro"]


def test_the_lmdb_package_path_checks_the_file_size_first(lmdb_reports):
    reports, expect = lmdb_reports
    f = expect["lmdb_package_truncated"]
    msg = clean_error(reports["lmdb_package_truncated"])
    _names(msg, f)
    assert "must hold at least %d bytes, but it holds %d" % (f["need"], f["holds"]) in msg


def test_bad_datum_records_name_database_and_key(lmdb_reports):
    reports, expect = lmdb_reports
    msg = clean_error(reports["bad_datum"])
    _names(msg, expect["bad_datum"])
    assert "record '00000005' is not a valid Datum" in msg
    assert "(database '%s')" % expect["bad_datum"]["db"] in msg
    msg = clean_error(reports["datum_size"])
    assert ("record '00000007': Datum data holds 100 bytes but channels x height x width = "
            "3 x 8 x 8 = 192 (database '%s')" % expect["datum_size"]["db"]) in msg
    msg = clean_error(reports["datum_shape"])
    assert ("record '00000020' is 3 x 9 x 9 but the first record of its batch ('00000016') is "
            "3 x 8 x 8") in msg
    assert "(database '%s')" % expect["datum_shape"]["db"] in msg


# -- the reader itself --------------------------------------------------------------------

def _lmdb_package_records(path):
    import lmdb
    env = lmdb.open(path, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return list(txn.cursor()), env.stat()
    finally:
        env.close()


@pytest.mark.parametrize("kind", ["small", "overflow", "deep"])
def test_caffepy_reads_what_the_lmdb_package_reads(tmp_path, kind):
    rng = np.random.default_rng(3)
    if kind == "small":         # one leaf page
        recs = [(key(i), array_to_datum(rng.integers(0, 256, (1, 2, 3), dtype=np.uint8), i))
                for i in range(5)]
    elif kind == "overflow":    # values larger than a page: overflow runs
        recs = [(key(i), array_to_datum(rng.integers(0, 256, (3, 30, 30), dtype=np.uint8), i))
                for i in range(400)]
    else:                       # enough small records for a tree of depth 3
        recs = [(key(i), bytes(rng.integers(0, 256, int(rng.integers(1, 40)), dtype=np.uint8)))
                for i in range(30000)]
    path = str(tmp_path / kind)
    write_lmdb(path, recs)
    ref, stat = _lmdb_package_records(path)
    assert {"small": 1, "overflow": 2, "deep": 3}[kind] == stat["depth"]
    if kind == "overflow":
        assert stat["overflow_pages"] >= 400
    db = open_db(path, "lmdb")
    try:
        assert db._file is not None                      # caffepy's own reader
        cur = WrappingCursor(db)
        got = [cur.read() for _ in range(len(ref) + 2)]
    finally:
        db.close()
    assert got[:len(ref)] == [(bytes(k), bytes(v)) for k, v in ref]
    assert got[len(ref):] == [(bytes(k), bytes(v)) for k, v in ref[:2]]   # wrapped around


def test_an_empty_lmdb_is_refused(tmp_path):
    path = str(tmp_path / "empty")
    write_lmdb(path, [])
    db = open_db(path, "lmdb")
    with pytest.raises(DataError, match=r"database '.*empty' is empty"):
        WrappingCursor(db)
    db.close()


# -- LevelDB ------------------------------------------------------------------------------

def test_damaged_leveldb_is_a_clean_error(tmp_path):
    pytest.importorskip("plyvel")
    from caffepy.data.db import write_leveldb
    data = items()
    path = str(tmp_path / "ldb")
    write_leveldb(path, [(key(i), array_to_datum(data[i], i % 10)) for i in range(N_RECORDS)])
    import plyvel
    db = plyvel.DB(path)                    # opening replays the log into a table file
    db.compact_range()
    db.close()
    rng = np.random.default_rng(9)
    tables = [f for f in os.listdir(path) if f.endswith((".ldb", ".sst"))]
    assert tables
    for name in tables:
        full = os.path.join(path, name)
        n = os.path.getsize(full)
        with open(full, "r+b") as f:
            f.seek(n // 4)
            f.write(rng.bytes(n // 2))
    nf = os.path.join(str(tmp_path), "ldb.prototxt")
    with open(nf, "w") as f:
        f.write(NET.format(src=path, prefetch=2).replace("LMDB", "LEVELDB"))
    reports = run_cases([{"name": "leveldb", "code": "result = run_net(%r, 60)" % nf}], tmp_path)
    msg = clean_error(reports["leveldb"])
    # e.g. "LevelDB '...': reading failed after key '00000094': CorruptionError: b'Corruption:
    # bad block type'" (or a damaged record that is not a Datum)
    assert "Layer 'data' (Data)" in msg and "'%s'" % path in msg


# -- HDF5 -----------------------------------------------------------------------------------

H5NET = """
layer { name: "h5" type: "HDF5Data" top: "data" top: "label"
        hdf5_data_param { source: "%s" batch_size: 4 } }
"""


def _h5(tmp_path, files):
    """Write the .h5 files ({name: {dataset: array}}) and their list; returns the net text."""
    import h5py
    names = []
    for fname, datasets in files.items():
        full = str(tmp_path / fname)
        with h5py.File(full, "w") as f:
            for k, v in datasets.items():
                f.create_dataset(k, data=v)
        names.append(full)
    lst = str(tmp_path / "list.txt")
    with open(lst, "w") as f:
        f.write("\n".join(names) + "\n")
    return H5NET % lst, names


def _build(text):
    return caffepy.Net(text, caffepy.TRAIN)


def test_hdf5_missing_dataset(tmp_path):
    text, (f1,) = _h5(tmp_path, {"a.h5": {"data": np.zeros((6, 2), np.float32)}})
    with pytest.raises(NetError, match=r"Layer 'h5' \(HDF5Data\): HDF5 file '%s' has no dataset "
                                       r"'label' \(the dataset read into top 'label'; it has: "
                                       r"data\)" % f1):
        _build(text)


def test_hdf5_wrong_dims(tmp_path):
    text, (f1,) = _h5(tmp_path, {"a.h5": {"data": np.zeros((6, 2), np.float32),
                                          "label": np.zeros(5, np.float32)}})
    with pytest.raises(NetError, match=r"Layer 'h5' \(HDF5Data\): datasets in '%s' must have the "
                                       r"same number of rows: 'data' has 6, 'label' has 5" % f1):
        _build(text)
    text, (f1,) = _h5(tmp_path, {"b.h5": {"data": np.zeros((6, 2), np.float32),
                                          "label": np.float32(3)}})
    with pytest.raises(NetError, match=r"dataset 'label' in '%s' must have at least 1 axis"
                       % f1):
        _build(text)


def test_hdf5_row_shape_differs_between_files(tmp_path):
    text, (f1, f2) = _h5(tmp_path, {
        "a.h5": {"data": np.zeros((4, 2), np.float32), "label": np.zeros(4, np.float32)},
        "b.h5": {"data": np.zeros((4, 3), np.float32), "label": np.zeros(4, np.float32)}})
    net = _build(text)
    # the forward that reads the last row of a.h5 opens b.h5 (as Caffe's Next() does)
    with pytest.raises(DataError, match=r"Layer 'h5' \(HDF5Data\): dataset 'data' in '%s' has "
                                        r"rows of shape 3, but the first file had 2" % f2):
        net.forward()


def test_hdf5_non_numeric(tmp_path):
    text, (f1,) = _h5(tmp_path, {"a.h5": {"data": np.array([b"x", b"yy"]),
                                          "label": np.zeros(2, np.float32)}})
    with pytest.raises(NetError, match=r"dataset 'data' in '%s' has unsupported type \|S2 \(need "
                                       r"float or integer data\)" % f1):
        _build(text)


def test_hdf5_truncated_file_in_a_child(tmp_path):
    text, (f1,) = _h5(tmp_path, {"a.h5": {"data": np.arange(4000, dtype=np.float32)
                                                    .reshape(1000, 4),
                                          "label": np.arange(1000, dtype=np.float32)}})
    os.truncate(f1, os.path.getsize(f1) // 2)
    nf = str(tmp_path / "h5.prototxt")
    with open(nf, "w") as f:
        f.write(text)
    reports = run_cases([{"name": "h5", "code": "result = run_net(%r, 300)" % nf}], tmp_path)
    msg = clean_error(reports["h5"])
    assert "Layer 'h5' (HDF5Data)" in msg and f1 in msg


def _declared_h5(tmp_path, rows):
    """A chunked .h5 file whose header declares ``rows`` rows (none written); its list."""
    import h5py
    full = str(tmp_path / "big.h5")
    with h5py.File(full, "w") as f:
        f.create_dataset("data", shape=(rows, 2), dtype="f4", chunks=(64, 2))
        f.create_dataset("label", shape=(rows,), dtype="f4", chunks=(64,))
    lst = str(tmp_path / "list.txt")
    with open(lst, "w") as f:
        f.write(full + "\n")
    return full, lst


def test_hdf5_in_order_keeps_no_row_index(tmp_path, monkeypatch):
    # 20M declared rows read in order, a batch at a time: no index of the rows (160 MB as
    # int64) is made
    import tracemalloc
    from caffepy.data import hdf5
    monkeypatch.setattr(hdf5, "WHOLE_FILE_BYTES", 0)
    full, lst = _declared_h5(tmp_path, 20000000)
    tracemalloc.start()
    try:
        net = _build(H5NET % lst)
        net.forward()
        net.forward()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak
    # unwritten rows read as the fill value, 0
    np.testing.assert_array_equal(to_numpy(net.blobs["data"].data), np.zeros((4, 2)))
    np.testing.assert_array_equal(to_numpy(net.blobs["label"].data), np.zeros(4))
    net.close()


def test_hdf5_shuffle_permutation_is_checked_against_the_limit(tmp_path, monkeypatch):
    # with shuffle every row of the file is permuted, as Caffe does: 8 bytes a row
    full, lst = _declared_h5(tmp_path, 200000)
    monkeypatch.setenv("CAFFEPY_MAX_BLOB_BYTES", "1M")
    with pytest.raises(DataError) as info:
        _build((H5NET % lst).replace("batch_size: 4", "batch_size: 4 shuffle: true"))
    assert isinstance(info.value, NetError)
    assert str(info.value) == (
        "Layer 'h5' (HDF5Data): shuffling HDF5 file '%s' (listed in '%s'): the permutation of "
        "its 200000 rows (8 bytes a row) needs 1600000 bytes (1.5 MiB), more than the limit "
        "CAFFEPY_MAX_BLOB_BYTES=1M: 1048576 bytes (1.0 MiB)" % (full, lst))


@pytest.fixture(params=["whole file", "per batch"])
def h5_reading(request, monkeypatch):
    """Small files are read whole (as Caffe does); larger ones a batch at a time."""
    from caffepy.data import hdf5
    if request.param == "per batch":
        monkeypatch.setattr(hdf5, "WHOLE_FILE_BYTES", 0)
    return request.param


def test_hdf5_reads_the_rows_of_each_batch_in_order(tmp_path, h5_reading):
    data = np.arange(30, dtype=np.float32).reshape(10, 3)
    label = np.arange(10, dtype=np.float32) * 2
    text, _ = _h5(tmp_path, {"a.h5": {"data": data, "label": label}})
    net = _build(text)
    seen = []
    for _ in range(3):                              # 12 rows: the 10, then rows 0 and 1 again
        net.forward()
        seen.append((to_numpy(net.blobs["data"].data).copy(),
                     to_numpy(net.blobs["label"].data).copy()))
    rows = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    np.testing.assert_array_equal(np.concatenate([d for d, _ in seen]), data[rows])
    np.testing.assert_array_equal(np.concatenate([lb for _, lb in seen]), label[rows])


def test_hdf5_shuffled_rows_follow_the_seeded_permutation(tmp_path, h5_reading):
    from caffepy import backend
    data = np.arange(16, dtype=np.float32).reshape(8, 2)
    label = np.arange(8, dtype=np.float32)
    text, _ = _h5(tmp_path, {"a.h5": {"data": data, "label": label}})
    text = text.replace("batch_size: 4", "batch_size: 4 shuffle: true")
    backend.set_random_seed(11)
    net = _build(text)
    got = []
    for _ in range(4):                                  # two passes of 8 rows
        net.forward()
        got.extend(to_numpy(net.blobs["label"].data).astype(int).tolist())
    # the same draws: the file order (one file), the rows' order, then a reshuffle at the end
    backend.set_random_seed(11)
    rng = backend.rng()
    rng.permutation(1)
    perm = rng.permutation(8)
    first = perm.tolist()
    rng.shuffle(perm)
    assert got == first + perm.tolist()
    np.testing.assert_array_equal(to_numpy(net.blobs["data"].data), data[perm[4:]])


def test_the_lmdb_package_path_reads_the_records_and_wraps_its_errors(tmp_path, monkeypatch):
    import lmdb
    from caffepy.data import db as dbmod

    def unsupported(*args):
        raise dbmod._Unsupported("test")
    monkeypatch.setattr(dbmod, "_LMDBFile", unsupported)
    path = write_db(tmp_path / "pkg")
    ref, _ = _lmdb_package_records(path)
    db = open_db(path, "lmdb")
    try:
        assert db._file is None and db.env is not None
        cur = WrappingCursor(db)
        got = [cur.read() for _ in range(N_RECORDS + 1)]
        expected = [(bytes(k), bytes(v)) for k, v in ref]
        assert got == expected + expected[:1]
        inner = cur._cursor

        class Broken:
            def __init__(self, real):
                self.real = real

            def next(self):
                raise lmdb.CorruptedError("mdb_cursor_get: MDB_CORRUPTED: Located page was "
                                          "wrong type")

            def key(self):
                return self.real.key()

            def value(self):
                return self.real.value()
        inner._cur = Broken(inner._cur)
        with pytest.raises(DataError, match=r"LMDB '%s': reading failed after key '00000001': "
                                            r"mdb_cursor_get: MDB_CORRUPTED: Located page was "
                                            r"wrong type" % path):
            cur.read()
    finally:
        db.close()
