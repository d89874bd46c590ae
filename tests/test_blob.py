"""Blob as Caffe's Blob: memory kept across reshapes within capacity, shared data and diff, and
the shape string the logs print."""
import numpy as np

from caffepy.blob import Blob

f32 = np.float32


def test_blob_shrink_then_grow_within_capacity_keeps_memory():
    # Blob::Reshape reallocates only when count > capacity_.
    b = Blob(2, 3)
    b.data[...] = np.arange(6, dtype=f32).reshape(2, 3)
    mem = b.flat_data
    b.reshape(1, 3)
    b.reshape(2, 3)
    assert np.shares_memory(mem, b.flat_data)
    np.testing.assert_array_equal(b.data.ravel(), np.arange(6, dtype=f32))


def test_blob_sharer_growing_past_its_own_capacity_gets_fresh_memory():
    # Blob::ShareData/ShareDiff replace data_/diff_ but leave capacity_ alone, so a sharer
    # that grows past its own capacity_ allocates new (zeroed, unshared) memory even when
    # the shared SyncedMemory would have been big enough.
    owner = Blob(10)
    owner.data[...] = 7
    owner.reshape(4)
    sharer = Blob(4)
    sharer.share_data(owner)
    sharer.share_diff(owner)
    assert sharer.shares_data_with(owner)
    sharer.reshape(4, 1)                     # same count: still shared
    assert sharer.shares_data_with(owner)
    sharer.reshape(8)                        # 8 > capacity_ 4
    assert not sharer.shares_data_with(owner)
    np.testing.assert_array_equal(sharer.data, np.zeros(8, f32))
    owner.reshape(10)                        # the owner keeps its own buffer
    np.testing.assert_array_equal(owner.data, np.full(10, 7, f32))


# -- logs -----------------------------------------------------------------------------------

def test_shape_string_matches_blob_shape_string():
    # Blob::shape_string: `stream << shape_[i] << " "` for each axis, then "(" << count_ << ")".
    assert Blob(()).shape_string() == "(1)"
    assert Blob(8, 1, 10, 10).shape_string() == "8 1 10 10 (800)"
