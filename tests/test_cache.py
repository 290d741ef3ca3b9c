"""Embedding cache in memory and on disk, precompute order, lazy stacks, `napari-sam embed`."""

import argparse
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

torch = pytest.importorskip("torch")

from napari_sam.core.cache import EmbeddingCache, embed_cached, slice_signature  # noqa: E402
from napari_sam.core.disk_cache import CacheMismatch, DiskCache, Geometry, settings_for  # noqa: E402
from napari_sam.core.lazy import open_stack  # noqa: E402
from napari_sam.core.precompute import batch_size_for, outward_order, precompute  # noqa: E402
from napari_sam.core.predictor import Embedding  # noqa: E402


class FakePredictor:
    """The predictor's embedding interface, with a cheap encoder that counts its calls."""

    def __init__(self, checksum="c0ffee", normalize="percentile", C=8):
        self.model = SimpleNamespace(checksum=checksum, name="fake", device=torch.device("cpu"), dtype=torch.float32,
                                     arch="vit_b")
        self.normalize = normalize
        self.native = False
        self.input_scale = 1.0
        self.C = C
        self.calls = 0

    def embed(self, a, channel_axis=None, channel=None):
        self.calls += 1
        a = np.asarray(a, np.float32)
        f = torch.arange(self.C * 16, dtype=torch.float32).reshape(1, self.C, 4, 4) * 1e-3 + float(a.mean())
        gray = np.clip(a, 0, 255).astype(np.uint8)
        return Embedding(f, a.shape[:2], (16, 16), (16, 16), gray)


class CountingStack:
    """An array-like that records which slices are read."""

    def __init__(self, data):
        self._d = data
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.reads: list = []
        self._lock = threading.Lock()

    def __getitem__(self, index):
        with self._lock:
            self.reads.append(index)
        return self._d[index]

    def __len__(self):
        return self.shape[0]


def _stack(nz=9, shape=(12, 10), seed=0):
    return np.random.default_rng(seed).integers(0, 200, (nz, *shape)).astype(np.uint16)


# ------------------------------------------------------------------ memory --
def _emb(nbytes_features=1024, value=0.0):
    n = nbytes_features // 4
    return Embedding(torch.full((1, n, 1, 1), value), (4, 4), (4, 4), (4, 4), None)


def test_memory_cache_lru_under_budget_in_fp16():
    c = EmbeddingCache(max_bytes=2 * 512)  # two fp16 entries of 256 values
    for i in range(3):
        c.put(("k", i), _emb(1024, float(i)))
    assert len(c) == 2 and ("k", 0) not in c and c.nbytes == 1024
    got = c.get(("k", 2))
    assert got.features.dtype == torch.float32 and float(got.features[0, 0]) == 2.0
    c.get(("k", 1))  # now most recent: ("k", 2) goes next
    c.put(("k", 3), _emb(1024, 3.0))
    assert ("k", 2) not in c and ("k", 1) in c
    assert c.get(("missing",)) is None and c.hits == 2 and c.misses == 1


def test_slice_signature_is_content_not_object():
    a = _stack()[3]
    assert slice_signature(a) == slice_signature(a.copy()) == slice_signature(np.asfortranarray(a))
    b = a.copy()
    b[0, 0] += 1
    assert slice_signature(a) != slice_signature(b)
    assert slice_signature(a) != slice_signature(a.astype(np.int32))


def test_vit_b_slice_is_2_mib_in_memory():
    c = EmbeddingCache()
    c.put("k", Embedding(torch.zeros(1, 256, 64, 64), (512, 512), (1024, 1024), (1024, 1024), None))
    assert c.nbytes == 2 * 1024 * 1024


# -------------------------------------------------------------------- disk --
def _settings(pred, stack, **kw):
    return settings_for(pred, stack.shape, stack.dtype, **kw)


def _disk(tmp_path, pred, stack, name="c.zarr"):
    emb = pred.embed(stack[0])
    return DiskCache.create(tmp_path / name, _settings(pred, stack), Geometry.of(emb))


def test_disk_roundtrip_and_resume(tmp_path):
    pred, st = FakePredictor(), _stack()
    disk = _disk(tmp_path, pred, st)
    e = pred.embed(st[4])
    disk.put(4, slice_signature(st[4]), e)
    again = DiskCache.open(tmp_path / "c.zarr", _settings(pred, st))
    assert again.done() == [(4,)]
    got = again.get(4, slice_signature(st[4]))
    assert torch.allclose(got.features, e.features, rtol=1e-3)
    assert np.array_equal(got.gray, e.gray) and got.original_size == e.original_size
    assert again.get(5, slice_signature(st[5])) is None  # not computed yet
    assert again.get(4, slice_signature(st[5])) is None  # bytes differ: a miss, not a wrong answer


@pytest.mark.parametrize("change, word", [
    ({"checksum": "other"}, "model"),
    ({"normalize": "minmax"}, "normalisation"),
])
def test_disk_refuses_other_model_or_settings(tmp_path, change, word):
    pred, st = FakePredictor(), _stack()
    _disk(tmp_path, pred, st)
    with pytest.raises(CacheMismatch, match=word):
        DiskCache.open(tmp_path / "c.zarr", _settings(FakePredictor(**change), st))


def test_disk_refuses_other_image(tmp_path):
    pred, st = FakePredictor(), _stack()
    disk = _disk(tmp_path, pred, st)
    disk.put(2, slice_signature(st[2]), pred.embed(st[2]))
    with pytest.raises(CacheMismatch, match="image shape"):
        DiskCache.open(tmp_path / "c.zarr", _settings(pred, _stack(nz=5)))
    other = _stack(seed=1)
    with pytest.raises(CacheMismatch, match="different image: slice 2"):
        DiskCache.open(tmp_path / "c.zarr", _settings(pred, other)).check_image(other, slice_signature)
    # another stack that starts with the same (blank) slice: found by the middle and last stored slices
    for z in (0, 6):
        disk.put(z, slice_signature(st[z]), pred.embed(st[z]))
    same_start = _stack(seed=2)
    same_start[0] = st[0]
    with pytest.raises(CacheMismatch, match="different image: slice [26]"):
        disk.check_image(same_start, slice_signature)
    disk.check_image(st, slice_signature)  # its own image passes


def test_disk_knows_the_model_by_checksum_and_serves_only_its_settings(tmp_path):
    """A cache made with "vit_b" serves the same checkpoint loaded by path (same sha256, other name); it does
    not serve another magnification (the widget then encodes the slice instead of reading a 2x embedding)."""
    pred, st = FakePredictor(), _stack()
    _disk(tmp_path, pred, st)
    by_path = FakePredictor()
    by_path.model.name = "sam_vit_b_01ec64.pth"
    disk = DiskCache.open(tmp_path / "c.zarr", _settings(by_path, st))
    assert disk.serves(by_path)
    other_scale = FakePredictor()
    other_scale.input_scale = 2.0
    assert not disk.serves(other_scale) and not disk.serves(FakePredictor(normalize="minmax"))
    with pytest.raises(CacheMismatch, match="input magnification"):
        disk.check(_settings(other_scale, st))


@pytest.mark.parametrize("image, cache", [
    ("stack.tif", "stack.embeddings.zarr"),
    ("2024.05.01_embryo1.tif", "2024.05.01_embryo1.embeddings.zarr"),
    ("cells.t01.ome.tiff", "cells.t01.embeddings.zarr"),
    ("data.zarr", "data.embeddings.zarr"),
])
def test_default_cache_path_keeps_dotted_names_apart(image, cache, tmp_path):
    from napari_sam.core.disk_cache import default_cache_path

    assert default_cache_path(tmp_path / image) == tmp_path / cache


def test_not_a_cache_is_explained(tmp_path):
    (tmp_path / "x.zarr").mkdir()
    with pytest.raises(CacheMismatch, match="not a napari-sam embedding cache"):
        DiskCache.open(tmp_path / "x.zarr")


def test_embed_cached_memory_then_disk_then_encoder(tmp_path):
    pred, st = FakePredictor(), _stack()
    disk, mem = _disk(tmp_path, pred, st), EmbeddingCache()
    pred.calls = 0
    embed_cached(pred, mem, st[3], disk=disk, index=3)
    embed_cached(pred, mem, st[3], disk=disk, index=3)
    assert pred.calls == 1 and mem.hits == 1
    fresh = EmbeddingCache()  # a new session: found on disk
    e = embed_cached(pred, fresh, st[3], disk=disk, index=3)
    assert pred.calls == 1 and e.features.dtype == torch.float32 and len(fresh) == 1
    embed_cached(pred, None, st[5], disk=disk, index=5)  # disk only
    assert pred.calls == 2 and (5,) in disk.done()


# --------------------------------------------------------------- precompute --
def test_outward_order():
    assert outward_order(4, 0, 9) == [4, 5, 3, 6, 2, 7, 1, 8, 0]
    assert outward_order(0, 0, 4) == [0, 1, 2, 3]
    assert outward_order(9, 2, 6) == [5, 4, 3, 2]


def test_precompute_outward_and_recentre():
    pred, st = FakePredictor(), CountingStack(_stack(nz=12))
    gen = precompute(pred, st, start=5, cache=EmbeddingCache())
    seen = [next(gen).index for _ in range(3)]
    assert seen == [5, 6, 4]
    seen.append(gen.send(10).index)  # the user moved to slice 10
    seen += [p.index for p in gen]
    assert seen == [5, 6, 4, 10, 11, 9, 8, 7, 3, 2, 1, 0] and pred.calls == 12


def test_precompute_skips_what_is_cached_and_reads_only_its_range():
    pred, st = FakePredictor(), CountingStack(_stack(nz=20))
    mem = EmbeddingCache()
    embed_cached(pred, mem, st[8])
    st.reads.clear()
    out = list(precompute(pred, st, start=8, z_range=(6, 11), cache=mem))
    assert [p.source for p in out] == ["memory"] + ["encoder"] * 4
    assert sorted(st.reads) == [6, 7, 8, 9, 10] and pred.calls == 5


def test_precompute_stops_at_memory_budget_without_disk():
    pred, st = FakePredictor(C=16), _stack(nz=10)
    one = pred.embed(st[0])
    per_slice = one.features.nelement() * 2 + one.gray.nbytes
    mem = EmbeddingCache(max_bytes=3 * per_slice)
    out = list(precompute(pred, st, start=4, cache=mem))
    assert [p.index for p in out if p.source == "encoder"] == [4, 5, 3]
    assert out[-1].stopped.startswith("memory budget full") and len(mem) == 3 and pred.calls == 4


def test_precompute_disk_resumes(tmp_path):
    pred, st = FakePredictor(), _stack(nz=8)
    disk = _disk(tmp_path, pred, st)
    pred.calls = 0
    gen = precompute(pred, st, start=0, disk=disk)
    for _ in range(3):
        next(gen)
    gen.close()  # cancelled
    assert len(disk.done()) == 3
    disk = DiskCache.open(tmp_path / "c.zarr", _settings(pred, st))
    out = list(precompute(pred, st, start=0, disk=disk))
    assert [p.source for p in out].count("disk") == 3 and pred.calls == 8
    assert len(disk.done()) == 8


def test_batch_size_is_one_off_cuda_and_fits_memory_on_cuda():
    assert batch_size_for("cpu") == 1
    assert batch_size_for("cuda", "vit_b", free_bytes=int(20e9)) == 8
    assert batch_size_for("cuda", "vit_b", free_bytes=int(4.5e9)) == 2
    assert batch_size_for("cuda", "vit_h", free_bytes=int(2e9)) == 1


# ------------------------------------------------------------- lazy stacks --
@pytest.mark.parametrize("compress, kind", [(None, "memmap"), ("zlib", "zarr")])
def test_open_tiff_lazily(tmp_path, compress, kind):
    st = _stack(nz=6, shape=(32, 40))
    tifffile.imwrite(tmp_path / "s.tif", st, compression=compress)
    vol = open_stack(tmp_path / "s.tif")
    assert vol.kind == kind and vol.shape == st.shape and not vol.rgb
    assert np.array_equal(np.asarray(vol.data[4]), st[4])


def test_open_2d_tiff_is_a_one_slice_stack(tmp_path):
    img = _stack(nz=1)[0]
    tifffile.imwrite(tmp_path / "one.tif", img)
    vol = open_stack(tmp_path / "one.tif")
    assert vol.was_2d and vol.shape == (1, *img.shape) and np.array_equal(vol.data[0], img)


def test_zarr_stack_reads_only_requested_slices(tmp_path):
    import zarr

    st = _stack(nz=40, shape=(24, 24))
    z = zarr.open_array(str(tmp_path / "big.zarr"), mode="w", shape=st.shape, chunks=(1, 24, 24), dtype=st.dtype)
    z[:] = st
    vol = open_stack(tmp_path / "big.zarr")
    counted = CountingStack(vol.data)
    pred, mem = FakePredictor(), EmbeddingCache()
    list(precompute(pred, counted, start=20, z_range=(18, 23), cache=mem))
    assert sorted(counted.reads) == [18, 19, 20, 21, 22]
    assert all(isinstance(i, int) for i in counted.reads)


def test_dask_stack_is_computed_one_slice_at_a_time():
    da = pytest.importorskip("dask.array")
    computed = []

    def load(block, block_info=None):
        computed.append(block_info[None]["chunk-location"][0])
        return block

    st = da.from_array(_stack(nz=16), chunks=(1, 12, 10)).map_blocks(load, dtype=np.uint16)
    list(precompute(FakePredictor(), st, start=3, z_range=(2, 5), cache=EmbeddingCache()))
    assert sorted(computed) == [2, 3, 4]


def test_memmap_larger_than_budget_streams(tmp_path):
    """A memory-mapped stack is embedded slice by slice; nothing reads it whole."""
    st = np.lib.format.open_memmap(tmp_path / "s.npy", mode="w+", dtype=np.uint16, shape=(30, 64, 64))
    st[:] = _stack(nz=30, shape=(64, 64))
    st.flush()
    vol = open_stack(tmp_path / "s.npy")
    counted = CountingStack(vol.data)
    disk = _disk(tmp_path, FakePredictor(), vol.data)
    out = list(precompute(FakePredictor(), counted, start=0, disk=disk))
    assert len(out) == 30 and sorted(counted.reads) == list(range(30))


# -------------------------------------------------------------------- CLI --
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from ._sam_helpers import save_tiny_vit

    return save_tiny_vit(tmp_path_factory.mktemp("ckpt") / "tiny.pth", embed_dim=32)


def _embed_cli(argv):
    from napari_sam._cli_embed import add_embed_parser, run_embed

    ap = argparse.ArgumentParser()
    add_embed_parser(ap.add_subparsers(dest="cmd"))
    return run_embed(ap.parse_args(["embed", *map(str, argv)]))


def test_cli_embed_writes_resumes_and_refuses(tmp_path, tiny_checkpoint, capsys):
    from napari_sam.io import InputError

    st = _stack(nz=4, shape=(40, 48))
    tifffile.imwrite(tmp_path / "s.tif", st)
    out = tmp_path / "s.zarr"
    args = ["--model", tiny_checkpoint, "--device", "cpu"]
    assert _embed_cli([tmp_path / "s.tif", "--out", out, *args]) == 0
    assert "4 encoded" in capsys.readouterr().err
    assert len(DiskCache.open(out).done()) == 4
    assert _embed_cli([tmp_path / "s.tif", "--out", out, *args]) == 0
    assert "0 encoded, 4 already there" in capsys.readouterr().err
    with pytest.raises(InputError, match="normalisation.*--overwrite"):
        _embed_cli([tmp_path / "s.tif", "--out", out, *args, "--normalize", "minmax"])
    tifffile.imwrite(tmp_path / "t.tif", _stack(nz=4, shape=(40, 48), seed=5))
    with pytest.raises(InputError, match="different image"):
        _embed_cli([tmp_path / "t.tif", "--out", out, *args])
    with pytest.raises(InputError, match="--z-range"):
        _embed_cli([tmp_path / "s.tif", "--out", tmp_path / "u.zarr", *args, "--z-range", "2:9"])
    with pytest.raises(InputError, match="image not found"):
        _embed_cli([tmp_path / "nope.tif", "--out", tmp_path / "u.zarr", *args])


def test_cli_cache_gives_the_predictors_embedding(tmp_path, tiny_checkpoint):
    from napari_sam.core.models import load_model
    from napari_sam.core.predictor import SlicePredictor

    st = _stack(nz=2, shape=(40, 48))
    tifffile.imwrite(tmp_path / "s.tif", st)
    assert _embed_cli([tmp_path / "s.tif", "--out", tmp_path / "s.zarr", "--model", tiny_checkpoint,
                       "--device", "cpu", "--start", "1"]) == 0
    pred = SlicePredictor(load_model(str(tiny_checkpoint), device="cpu"))
    disk = DiskCache.open(tmp_path / "s.zarr", settings_for(pred, st.shape, st.dtype))
    ref = pred.embed(st[0])
    got = disk.get(0, slice_signature(st[0]))
    assert torch.allclose(got.features, ref.features, rtol=2e-3, atol=2e-3)  # fp16 storage
    assert np.array_equal(got.gray, ref.gray)


def test_batches_fall_back_to_one_slice_at_a_time_off_cuda():
    from napari_sam.core.precompute import embed_batch

    pred, st = FakePredictor(), _stack(nz=6)
    assert len(embed_batch(pred, [st[0], st[1]])) == 2 and pred.calls == 2
    out = list(precompute(pred, st, start=2, cache=EmbeddingCache(), batch=3))
    assert [p.index for p in out] == [2, 3, 1, 4, 0, 5] and pred.calls == 8


def _encoder_calls(monkeypatch) -> list:
    """Every run of the real image encoder (``SlicePredictor.embed``), recorded."""
    from napari_sam.core.predictor import SlicePredictor

    calls, real = [], SlicePredictor.embed

    def embed(self, slice2d, **kw):
        calls.append(1)
        return real(self, slice2d, **kw)

    monkeypatch.setattr(SlicePredictor, "embed", embed)
    return calls


def test_cli_embed_overwrite_never_replaces_an_image_or_other_data(tmp_path, tiny_checkpoint):
    """``--out`` given the image's own zarr store (or a data folder) by a slip: refused even with --overwrite,
    before any encoder work, and left as it was. It was deleted, and the slices then read from it were zeros."""
    import zarr

    from napari_sam.io import InputError

    st = _stack(nz=3, shape=(40, 48))
    img = zarr.open(str(tmp_path / "img.zarr"), mode="w", shape=st.shape, dtype=st.dtype, chunks=(1, 40, 48))
    img[:] = st
    args = ["--model", tiny_checkpoint, "--device", "cpu"]
    for flags in ([], ["--overwrite"]):
        with pytest.raises(InputError, match="img.zarr is a zarr store but not a napari-sam embedding cache.*"
                                             "refusing to replace it; choose another name"):
            _embed_cli([tmp_path / "img.zarr", "--out", tmp_path / "img.zarr", *args, *flags])
    assert np.array_equal(open_stack(tmp_path / "img.zarr").data[:], st)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a zarr store: refusing to replace it"):
        _embed_cli([tmp_path / "img.zarr", "--out", tmp_path / "data", *args, "--overwrite"])
    assert (tmp_path / "data" / "notes.txt").read_text() == "keep me"


def test_cli_embed_starts_in_an_empty_folder_and_over_a_cache_cut_short(tmp_path, tiny_checkpoint, capsys):
    """A folder made beforehand (a file dialog's "new folder") is not "not a cache"; nor is a cache whose
    creation was killed before its record was written: both are (re)started without --overwrite."""
    import zarr

    st = _stack(nz=3, shape=(40, 48))
    tifffile.imwrite(tmp_path / "s.tif", st)
    (tmp_path / "empty.zarr").mkdir()
    zarr.open_group(str(tmp_path / "cut.zarr"), mode="w").create_array("features", shape=(3, 2), dtype="f2")
    for name in ("empty.zarr", "cut.zarr"):
        assert _embed_cli([tmp_path / "s.tif", "--out", tmp_path / name, "--model", tiny_checkpoint,
                           "--device", "cpu"]) == 0
        assert "3 slices (3 encoded, 0 already there)" in capsys.readouterr().err
        assert len(DiskCache.open(tmp_path / name).done()) == 3


def _points_csv(path, z=1):
    path.write_text(f"z,y,x\n{z},20,24\n")
    return path


def test_cache_of_a_big_endian_tiff_serves_segment(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    """ImageJ writes big-endian TIFFs: ``embed`` reads them memory-mapped ('>u2'), ``segment`` into memory
    ('<u2'). The cache was refused ("image dtype: cache has '>u2'") by the command made to use it."""
    from napari_sam.cli import main

    st = _stack(nz=3, shape=(40, 48))
    tifffile.imwrite(tmp_path / "be.tif", st, byteorder=">")
    assert open_stack(tmp_path / "be.tif").data.dtype.str == ">u2"
    args = ["--model", str(tiny_checkpoint), "--device", "cpu"]
    assert main(["embed", str(tmp_path / "be.tif"), "--out", str(tmp_path / "be.zarr"), *args]) == 0
    calls = _encoder_calls(monkeypatch)
    rc = main(["segment", str(tmp_path / "be.tif"), "--points", str(_points_csv(tmp_path / "p.csv")),
               "--out", str(tmp_path / "l.tif"), "--embeddings", str(tmp_path / "be.zarr"), *args])
    assert rc == 0, capsys.readouterr().err
    assert calls == [] and (tmp_path / "l.tif").exists(), "every slice came from the cache"
    assert slice_signature(st[1].astype(">u2")) == slice_signature(st[1])  # the widget's layer reads it too


def test_segment_with_a_cache_it_cannot_write_still_segments(tmp_path, tiny_checkpoint, capsys):
    """A cache on a read-only share or a full disk only speeds segmenting up: a slice it lacks is encoded,
    not added, and said so. The run failed with "Read-only file system" and wrote no labels."""
    from napari_sam.cli import main

    st = _stack(nz=3, shape=(40, 48))
    tifffile.imwrite(tmp_path / "s.tif", st)
    args = ["--model", str(tiny_checkpoint), "--device", "cpu"]
    assert _embed_cli([tmp_path / "s.tif", "--out", tmp_path / "c.zarr", *args, "--z-range", "0:1"]) == 0
    chunks = tmp_path / "c.zarr" / "features" / "c"
    if not chunks.is_dir():
        pytest.skip("not zarr's v3 chunk layout")
    (chunks / "1").write_text("")  # slice 1's features cannot be written: an OSError, as on a read-only disk
    before = DiskCache.open(tmp_path / "c.zarr").done()
    rc = main(["segment", str(tmp_path / "s.tif"), "--points", str(_points_csv(tmp_path / "p.csv")),
               "--out", str(tmp_path / "l.tif"), "--embeddings", str(tmp_path / "c.zarr"), *args])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "slices encoded here were not added to" in err and "it was only read" in err
    assert tifffile.imread(tmp_path / "l.tif").shape == st.shape
    assert DiskCache.open(tmp_path / "c.zarr").done() == before == [(0,)]
