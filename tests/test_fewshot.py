import numpy as np
import pytest

from jaxclip_fs.data.fewshot import capped_val_shots, nested_fewshot
from jaxclip_fs.errors import DataError


def _labels():
    rng = np.random.default_rng(0)
    return rng.permutation(np.repeat(np.arange(5), 20))


def test_nested_and_per_class():
    labels = _labels()
    idx16 = nested_fewshot(labels, 5, 16, seed=1)
    for k in (1, 2, 4, 8):
        idx_k = nested_fewshot(labels, 5, k, seed=1)
        np.testing.assert_array_equal(idx_k, idx16[:, :k])
    for c in range(5):
        assert np.all(labels[idx16[c]] == c)
        assert len(set(idx16[c].tolist())) == 16


def test_deterministic_and_seed_dependent():
    labels = _labels()
    a = nested_fewshot(labels, 5, 4, seed=2)
    nested_fewshot(labels, 5, 8, seed=3)  # an unrelated call in between changes nothing
    b = nested_fewshot(labels, 5, 4, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, nested_fewshot(labels, 5, 4, seed=3))


def test_too_few_images_names_class():
    labels = np.array([0, 0, 0, 1])
    with pytest.raises(DataError, match="class 'cat' .* 1 train images; 2 shots"):
        nested_fewshot(labels, 2, 2, seed=1, classnames=["dog", "cat"])


def test_val_cap():
    assert [capped_val_shots(k) for k in (1, 2, 4, 8, 16)] == [1, 2, 4, 4, 4]
