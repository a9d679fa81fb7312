import os

import numpy as np
import pytest
import torch

from recbole_missrec.atomic import atomic_open
from recbole_missrec.data.feature_file import (
    FeatureFileError, read_feature_file, write_feature_file, write_multi_vector_file,
)
from recbole_missrec.data.feature_store import read_store


def test_round_trip(tmp_path):
    table = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "d.feat1CLS"
    write_feature_file(path, table)
    assert np.array_equal(read_feature_file(path, 4, min_rows=3), table)
    assert os.path.getsize(path) == 3 * 4 * 4  # raw float32, no header


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(FeatureFileError, match=r"feature file not found: .*nope\.feat3CLS"):
        read_feature_file(tmp_path / "nope.feat3CLS", 4)


def test_size_not_a_multiple_of_the_row(tmp_path):
    path = tmp_path / "d.feat1CLS"
    np.zeros(10, dtype=np.float32).tofile(path)
    with pytest.raises(FeatureFileError, match=r"d\.feat1CLS.*not a multiple.*plm_size"):
        read_feature_file(path, 4)


def test_fewer_rows_than_item_tokens(tmp_path):
    path = tmp_path / "d.feat1CLS"
    np.zeros((3, 4), dtype=np.float32).tofile(path)
    with pytest.raises(FeatureFileError, match=r"d\.feat1CLS: 3 rows.*up to 4"):
        read_feature_file(path, 4, min_rows=5)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_rows(tmp_path, bad):
    path = tmp_path / "d.feat3CLS"
    table = np.zeros((4, 2), dtype=np.float32)
    table[2, 1] = bad
    table.tofile(path)
    with pytest.raises(FeatureFileError, match=r"d\.feat3CLS: 1 rows hold NaN or inf \(first rows: \[2\]\)"):
        read_feature_file(path, 2)


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "d.feat1CLS"
    write_feature_file(path, np.ones((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        write_feature_file(path, np.full((2, 2), np.nan))
    assert np.array_equal(read_feature_file(path, 2), np.ones((2, 2)))
    assert os.listdir(tmp_path) == ["d.feat1CLS"]  # no temp file left behind


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "d.feat1CLS"
    old = np.ones((2, 4), dtype=np.float32)
    write_feature_file(path, old)
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_open(path, "wb") as handle:
            handle.write(b"half a table")
            raise RuntimeError("disk full")
    assert np.array_equal(read_feature_file(path, 4), old)
    assert os.listdir(tmp_path) == ["d.feat1CLS"]


def test_written_files_get_the_umask_permissions(tmp_path):
    path = tmp_path / "d.feat1CLS"
    write_feature_file(path, np.zeros((1, 4), dtype=np.float32))
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_multi_vector_round_trip_and_alignment(tmp_path):
    path = tmp_path / "d.sent.npz"
    blocks = [np.ones((2, 3)), np.zeros((0, 3)), 2 * np.ones((3, 3))]
    write_multi_vector_file(path, ["a", "b", "c"], blocks)
    store = read_store(str(path), 3, np.array(["c", "a", "zz", "b"]))  # internal ids 1..4
    assert store.table.shape == (5, 3, 3)
    assert store.slot_mask.tolist() == [[False] * 3, [True] * 3, [True, True, False], [False] * 3, [False] * 3]
    assert store.present.tolist() == [False, True, True, False, False]  # zz is not in the file, b has no vector
    assert torch.equal(store.table[1], 2 * torch.ones(3, 3)) and store.table[2, 2].abs().sum() == 0
    assert torch.allclose(store.pooled()[1], 2 * torch.ones(3)) and torch.allclose(store.pooled()[2], torch.ones(3))
    assert read_store(str(path), 3, np.array(["c"]), max_slots=2).table.shape == (2, 2, 3)


def test_multi_vector_errors_name_the_file(tmp_path):
    path = tmp_path / "d.sent.npz"
    write_multi_vector_file(path, ["a"], [np.ones((2, 4))])
    with pytest.raises(FeatureFileError, match=r"d\.sent\.npz.*\[T, 3\].*plm_size"):
        read_store(str(path), 3, np.array(["a"]))
    with pytest.raises(FeatureFileError, match=r"d\.sent\.npz: none of the dataset's 1 item tokens"):
        read_store(str(path), 4, np.array(["x"]))
    np.savez(tmp_path / "bad.npz", vectors=np.ones((2, 4), np.float32), offsets=np.array([0, 3]), items=np.array(["a"]))
    with pytest.raises(FeatureFileError, match=r"bad\.npz: offsets must"):
        read_store(str(tmp_path / "bad.npz"), 4, np.array(["a"]))
    np.savez(tmp_path / "keys.npz", vectors=np.ones((2, 4), np.float32))
    with pytest.raises(FeatureFileError, match=r"keys\.npz: not a multi-vector feature file.*offsets"):
        read_store(str(tmp_path / "keys.npz"), 4, np.array(["a"]))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(FeatureFileError, match=r"junk\.npz: not a readable \.npz"):
        read_store(str(tmp_path / "junk.npz"), 4, np.array(["a"]))
    with pytest.raises(FeatureFileError, match=r"feature file not found: .*gone\.npz"):
        read_store(str(tmp_path / "gone.npz"), 4, np.array(["a"]))


def test_raw_store_marks_zero_rows_missing(tmp_path):
    path = tmp_path / "d.feat3CLS"
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    table[2] = 0
    write_feature_file(path, table)
    store = read_store(str(path), 3, np.array(["3", "2", "0"]))
    assert store.table.shape == (4, 1, 3) and store.present.tolist() == [False, True, False, True]
    assert torch.equal(store.table[1, 0], torch.from_numpy(table[3]))
    with pytest.raises(FeatureFileError, match="not a row index"):
        read_store(str(path), 3, np.array(["ASIN1"]))
