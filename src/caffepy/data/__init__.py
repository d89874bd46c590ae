"""Input data: Caffe's DataTransformer and Datum databases (LMDB, LevelDB).

    from caffepy.data import DataTransformer, open_db, WrappingCursor, array_to_datum
"""
from .db import (DataError, LMDBDatabase, LevelDBDatabase, WrappingCursor,  # noqa: F401
                 array_to_datum, datum_to_array, decode_image, open_db, parse_datum,
                 write_lmdb)
from .transformer import DataTransformer  # noqa: F401
