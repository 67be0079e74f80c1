"""Prefetching pipeline and the chunk-cached batch-encoding engine, with tiny fakes."""

import threading
import time

import jax.numpy as jnp
import numpy as np
import pytest

from jaxclip_fs.errors import DataError
from jaxclip_fs.features import cache, encode, pipeline

ROW_SHAPE = (2, 3)
W = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)


def fake_fn(params, rows):
    flat = rows.reshape(rows.shape[0], -1)
    return {"features": flat @ params["w"], "tap": jnp.tanh(rows)}


def fake_rows(i, rows_per_item):
    rng = np.random.default_rng(1000 + i)
    return rng.normal(size=(rows_per_item, *ROW_SHAPE)).astype(np.float32)


def expected(n, rows_per_item):
    rows = np.stack([fake_rows(i, rows_per_item) for i in range(n)])
    return rows.reshape(n, rows_per_item, -1) @ W, np.tanh(rows)


class CountingEncoder(encode.FixedBatchEncoder):
    def __init__(self, *args, fail_on_call=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.fail_on_call = fail_on_call

    def __call__(self, rows):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt
        return super().__call__(rows)


def make_encoder(batch_size=4, **kwargs):
    return CountingEncoder(fake_fn, {"w": W}, batch_size, ROW_SHAPE, **kwargs)


def loader(rows_per_item, bad=()):
    def load(i):
        if i in bad:
            raise DataError(f"img{i}.png: cannot read image (broken)")
        return fake_rows(i, rows_per_item)
    return load


def run(encoder, entry, n=13, r=3, bad=(), **kwargs):
    return encode.encode_items(encoder, loader(r, bad), n, r, entry, workers=2, progress=False,
                               **kwargs)


# --- pipeline ----------------------------------------------------------------------------


@pytest.mark.parametrize("workers, ahead", [(8, 3), (2, 6)])
def test_ordered_prefetch_keeps_order_and_bounds_in_flight(workers, ahead):
    """At most min(workers, ahead) loads run at once, and that many do: each load waits
    until the bound is reached (or briefly, at the end of the items), so a pipeline that
    submitted more than ``ahead`` calls, or ran them one by one, would show another maximum."""
    bound = min(workers, ahead)
    lock, full = threading.Condition(), {"running": 0, "max": 0}

    def load(i):
        with lock:
            full["running"] += 1
            full["max"] = max(full["max"], full["running"])
            lock.notify_all()
            lock.wait_for(lambda: full["running"] >= bound, timeout=0.5)
        time.sleep(0.001 * ((7 * i) % 5))  # finish out of order
        with lock:
            full["running"] -= 1
        return i * i

    out = [(i, f.result()) for i, f in pipeline.ordered_prefetch(load, range(24),
                                                                  workers=workers, ahead=ahead)]
    assert out == [(i, i * i) for i in range(24)]
    assert full["max"] == bound


def test_ordered_prefetch_reports_errors_at_their_item():
    def load(i):
        if i == 3:
            raise DataError("img3 broken")
        return i
    results = []
    for i, future in pipeline.ordered_prefetch(load, range(6), workers=2, ahead=2):
        try:
            results.append(future.result())
        except DataError as exc:
            results.append(str(exc))
    assert results == [0, 1, 2, "img3 broken", 4, 5]


def test_row_batches_pack_pad_and_track_owners():
    blocks = [(0, np.full((3, 2), 1.0)), (1, np.zeros((0, 2))), (2, np.full((2, 2), 3.0)),
              (3, np.full((1, 2), 4.0))]
    batches = list(pipeline.row_batches(blocks, 4, (2,)))
    assert [b.count for b in batches] == [4, 2]
    assert all(b.rows.shape == (4, 2) for b in batches)
    np.testing.assert_array_equal(batches[0].rows[:, 0], [1, 1, 1, 3])
    np.testing.assert_array_equal(batches[1].rows[:, 0], [3, 4, 0, 0])  # zero padding
    np.testing.assert_array_equal(np.concatenate([b.owner for b in batches]), [0, 0, 0, 2, 2, 3])
    np.testing.assert_array_equal(np.concatenate([b.sub for b in batches]), [0, 1, 2, 0, 1, 0])


# --- encoder -----------------------------------------------------------------------------


def test_fixed_batch_encoder_compiles_once():
    enc = make_encoder(batch_size=4)
    assert enc.output_shapes["features"].shape == (4, 4)
    for seed in range(3):
        enc(np.random.default_rng(seed).normal(size=(4, *ROW_SHAPE)).astype(np.float32))
    assert enc.num_compilations == 1
    with pytest.raises(ValueError, match="compiled for"):
        enc(np.zeros((3, *ROW_SHAPE), np.float32))


def test_encode_items_matches_direct_computation_with_one_compile(tmp_path):
    enc = make_encoder(batch_size=4)
    entry = cache.ChunkedEntry(tmp_path, {"test": 1}, num_items=13, chunk_size=5)
    got = run(enc, entry)
    feats, taps = expected(13, 3)
    np.testing.assert_allclose(got.outputs["features"], feats, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.outputs["tap"], taps, rtol=1e-6, atol=1e-6)
    assert got.valid.all() and got.errors == {}
    assert (got.loaded_chunks, got.computed_chunks) == (0, 3)
    assert enc.num_compilations == 1
    # chunks of 5 items x 3 rows = 15 rows -> 4 batches of 4 each (last padded); last chunk 9 rows
    assert enc.calls == 4 + 4 + 3


def test_no_cache_entry(tmp_path):
    got = run(make_encoder(), None)
    np.testing.assert_allclose(got.outputs["features"], expected(13, 3)[0], rtol=1e-5, atol=1e-5)
    assert (got.loaded_chunks, got.computed_chunks) == (0, 1)


def test_rerun_is_a_cache_hit_without_encoder_calls(tmp_path):
    spec = {"test": "hit"}
    first = run(make_encoder(), cache.ChunkedEntry(tmp_path, spec, 13, 5))
    enc = make_encoder()
    second = run(enc, cache.ChunkedEntry(tmp_path, spec, 13, 5))
    assert enc.calls == 0 and (second.loaded_chunks, second.computed_chunks) == (3, 0)
    for name in first.outputs:
        np.testing.assert_array_equal(first.outputs[name], second.outputs[name])


def test_corrupt_chunk_is_recomputed_alone(tmp_path, caplog):
    spec = {"test": "corrupt"}
    first = run(make_encoder(), cache.ChunkedEntry(tmp_path, spec, 13, 5))
    entry = cache.ChunkedEntry(tmp_path, spec, 13, 5)
    data = bytearray(open(entry.path(1), "rb").read())
    data[len(data) // 2] ^= 0x55
    open(entry.path(1), "wb").write(bytes(data))
    enc = make_encoder()
    with caplog.at_level("WARNING"):
        second = run(enc, entry)
    assert entry.path(1) in caplog.text
    assert (second.loaded_chunks, second.computed_chunks) == (2, 1) and enc.calls == 4
    np.testing.assert_array_equal(first.outputs["features"], second.outputs["features"])


def test_interrupt_loses_at_most_the_chunk_in_flight(tmp_path):
    spec = {"test": "interrupt"}
    enc = make_encoder(fail_on_call=6)  # during chunk 1 (calls 5..8)
    with pytest.raises(KeyboardInterrupt):
        run(enc, cache.ChunkedEntry(tmp_path, spec, 13, 5))
    enc = make_encoder()
    got = run(enc, cache.ChunkedEntry(tmp_path, spec, 13, 5))
    assert (got.loaded_chunks, got.computed_chunks) == (1, 2) and enc.calls == 4 + 3
    np.testing.assert_allclose(got.outputs["features"], expected(13, 3)[0], rtol=1e-5, atol=1e-5)


def test_unreadable_item_raises_or_is_skipped_and_recorded(tmp_path):
    spec = {"test": "skip"}
    with pytest.raises(DataError, match="img7.png"):
        run(make_encoder(), cache.ChunkedEntry(tmp_path, spec, 13, 5), bad={7})
    got = run(make_encoder(), cache.ChunkedEntry(tmp_path, spec, 13, 5), bad={7},
              skip_errors=True)
    assert np.flatnonzero(~got.valid).tolist() == [7]
    assert "img7.png" in got.errors[7]
    feats = expected(13, 3)[0]
    np.testing.assert_array_equal(got.outputs["features"][7], 0)
    keep = np.arange(13) != 7
    np.testing.assert_allclose(got.outputs["features"][keep], feats[keep], rtol=1e-5, atol=1e-5)
    # The cached chunk remembers the skip: raise mode still names the file, skip mode hits.
    with pytest.raises(DataError, match="img7.png"):
        run(make_encoder(), cache.ChunkedEntry(tmp_path, spec, 13, 5))
    enc = make_encoder()
    again = run(enc, cache.ChunkedEntry(tmp_path, spec, 13, 5), skip_errors=True)
    assert enc.calls == 0 and again.errors == got.errors
