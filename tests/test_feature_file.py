import os

import numpy as np
import pytest

from recbole_missrec.atomic import atomic_open
from recbole_missrec.data.feature_file import FeatureFileError, read_feature_file, write_feature_file


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
