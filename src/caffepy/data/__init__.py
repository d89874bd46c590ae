"""Input data: Caffe's DataTransformer, Datum databases (LMDB, LevelDB), image decoding and
resizing as OpenCV does them, R-CNN window files, and background prefetching.

    from caffepy.data import DataTransformer, open_db, WrappingCursor, array_to_datum
"""
from .datum import (array_to_datum, datum_to_array, decode_image,  # noqa: F401
                    encoded_datum, parse_datum)
from .db import (DataError, LMDBDatabase, LMDBWriter, LevelDBDatabase,  # noqa: F401
                 LevelDBWriter, WrappingCursor, new_writer, open_db, write_db, write_leveldb,
                 write_lmdb)
from .image import read_image, resize_bilinear  # noqa: F401
from .prefetch import Batch, Prefetcher  # noqa: F401
from .transformer import DataTransformer  # noqa: F401
