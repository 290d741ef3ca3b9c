"""Speed and memory of napari-sam against official segment-anything, in one run.

    python benchmarks/bench_speed.py [--checkpoint sam_vit_b.pth] [--size 512] [--repeats 3]

Prints, for the same slice and the same checkpoint in the same process:

1. ViT-B slice embedding: official ``SamPredictor.set_image`` vs ours
   (``SlicePredictor.embed`` through ``core.fast_vit``), ratio, and how far
   apart the embeddings are. Without ``--checkpoint`` the ViT-B is randomly
   initialised and saved to a file first: weights do not change the
   arithmetic, so they do not change the time.
2. A click on a cached slice: official ``SamPredictor.predict`` vs ours
   (``SlicePredictor.predict`` on a cached embedding, masks upsampled by
   ``core.fast_post``), median of many, ratio; and the upsampling alone for
   objects of a few sizes (masks checked identical).
3. Propagation of 1 vs 8 objects through 32 cached slices (embedded model on
   a synthetic nuclei stack, where objects really continue through z); and
   every nucleus of a 512 x 512 slice decoded with its mask prompt in windows.
4. Memory per cached slice (in-memory fp16, and on disk as zarr).
5. The embedded model's embedding time for a 512 x 512 slice (median of 10), its int8 encoder (the
   default on x86 CPUs, ``core.int8``) against fp32, interleaved, and for a
   1024 x 1024 slice at its 2x (encoded in tiles) and at 1x (median of 3); and 20 clicks on
   the 512 x 512 slice, one ``napari_sam.segment`` call each, with the API's embeddings
   (``api.EMBEDDINGS``: the slice encoded once) and with them cleared before every call.
6. MobileSAM (TinyViT encoder) slice embedding, official ``SamPredictor.set_image``
   vs ours, as in 1 (randomly initialised MobileSAM, saved and loaded by path).
7. SAM 2.1 Hiera-tiny slice embedding, Meta's ``SAM2ImagePredictor.set_image`` vs
   ours, and a click (``predict``), masks compared (randomly initialised; needs the
   ``sam2`` package).

The machine (CPU model, cores, torch threads) and the load average are printed
with the figures: on a busy machine, the times are not worth recording.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name"))
    except Exception:
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} logical cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def timed(fn, n=1):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def slice_image(size: int, seed=3):
    from napari_sam.synthetic import make_stack

    st = make_stack((1, size, size), seed=seed, radius_range=(12, 30), density=0.3)
    return st.image[0], st.labels[0]


def _fast_predictor(model, **kw):
    """Our predictor with the fast encoder, decoder and upsampling, however far they are integrated.

    Where ``SlicePredictor`` does not route through ``core.fast_vit`` /
    ``core.fast_decoder`` / ``core.fast_post`` yet, the same calls are patched in
    around our predictor's own calls only (the official predictor shares the
    ``Sam`` module and must keep running segment-anything's code).
    """
    import contextlib

    from napari_sam.core.fast_decoder import decode, dense_pe
    from napari_sam.core.fast_post import masks_from_low_res
    from napari_sam.core.fast_vit import encode
    from napari_sam.core.predictor import SlicePredictor

    pred = SlicePredictor(model, **kw)
    src = Path(sys.modules[SlicePredictor.__module__].__file__).read_text()
    patched = [name for name, marker in (("encoder", "run_encoder"), ("decoder", "fast_decoder"),
                                         ("upsampling", "masks_from_low_res")) if marker not in src]
    enc, md, pe = pred.sam.image_encoder, pred.sam.mask_decoder, pred.sam.prompt_encoder

    @contextlib.contextmanager
    def fast():
        if "encoder" in patched:
            enc.forward = lambda x: encode(enc, x)
        if "decoder" in patched:
            md.forward = lambda **k: decode(md, k["image_embeddings"], k["image_pe"], k["sparse_prompt_embeddings"],
                                            k["dense_prompt_embeddings"], k["multimask_output"])
            pe.get_dense_pe = lambda: dense_pe(pe)
        try:
            yield
        finally:
            for m in (enc, md):
                m.__dict__.pop("forward", None)
            pe.__dict__.pop("get_dense_pe", None)

    if "upsampling" in patched:
        def post(low):
            e = pred.embedding
            canvas = e.padded_size if pred.native else (pred.sam.image_encoder.img_size,) * 2
            return torch.from_numpy(masks_from_low_res(low, canvas, e.input_size, e.original_size,
                                                       float(pred.sam.mask_threshold)))
        pred._postprocess = post

    def wrap(method):
        def run(*a, **k):
            with fast():
                return method(pred, *a, **k)
        return run

    pred.embed = wrap(SlicePredictor.embed)
    pred.predict = wrap(SlicePredictor.predict)
    pred.predict_objects = wrap(SlicePredictor.predict_objects)
    return pred, patched


def bench_encoder(model, img, repeats, title="[1] ViT-B"):
    from segment_anything import SamPredictor

    from napari_sam.core.image import to_sam_rgb
    from napari_sam.core.sam2_model import image_predictor, is_sam2

    rgb8 = np.clip(np.rint(to_sam_rgb(img)), 0, 255).astype(np.uint8)
    sam2 = is_sam2(model.sam)
    official = image_predictor(model.sam) if sam2 else SamPredictor(model.sam)
    if sam2:  # SAM 2 runs its own modules: nothing to patch
        from napari_sam.core.predictor import SlicePredictor

        ours, patched = SlicePredictor(model), []
    else:
        ours, patched = _fast_predictor(model)
    t_off, t_ours = [], []
    emb = None
    for _ in range(repeats):  # interleaved, so drifting load hits both alike
        t_off += timed(lambda: official.set_image(rgb8))
        t_ours += timed(lambda: ours.set_image(img))
        emb = ours.embedding
    ref = official._features["image_embed"] if sam2 else official.features
    rel = float((emb.features - ref).abs().max() / ref.abs().max())
    mo, mu = statistics.median(t_off), statistics.median(t_ours)
    print(f"\n{title} slice embedding ({img.shape[0]}x{img.shape[1]} slice, {repeats} runs each, interleaved)")
    name = "SAM2ImagePredictor.set_image" if sam2 else "SamPredictor.set_image"
    print(f"    official {name:<30} median {mo:6.2f} s   runs {fmt(t_off)}")
    print(f"    ours     {'SlicePredictor.embed':<30} median {mu:6.2f} s   runs {fmt(t_ours)}")
    print(f"    ratio ours/official {mu / mo:.3f}   embeddings max |diff| / max |official| = {rel:.1e}")
    if patched:
        print(f"    (not yet in SlicePredictor, patched in for this run: {', '.join(patched)})")
    return official, ours, {"official_s": mo, "ours_s": mu, "ratio": mu / mo, "rel_diff": rel}


def fmt(ts):
    return "[" + ", ".join(f"{t:.2f}" for t in ts) + "]"


def bench_click(official, ours, img, labels, n=40):
    from napari_sam.core.cache import EmbeddingCache

    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    oid = int(ids[np.argmax(counts)])
    from napari_sam.synthetic import interior_point

    r, c = interior_point(labels == oid)
    cache = EmbeddingCache()
    cache.put("k", ours.embedding)
    ours.set_embedding(cache.get("k"))  # what a cached slice looks like: fp16 round trip
    pt = np.array([[c, r]], np.float32)
    official.predict(pt, np.array([1]), multimask_output=True)
    ours.predict(points=[[r, c]])
    t_off = timed(lambda: official.predict(pt, np.array([1]), multimask_output=True), n)
    t_ours = timed(lambda: ours.predict(points=[[r, c]]), n)
    got = ours.predict(points=[[r, c]]).masks[0]
    frac = float(got.mean())
    feats = official.features
    official.features = ours.embedding.features  # same (cached, fp16 round-tripped) features for both
    ref, _, _ = official.predict(pt, np.array([1]), multimask_output=True)
    official.features = feats
    diff = int((ref != got).sum())
    mo, mu = statistics.median(t_off), statistics.median(t_ours)
    print(f"\n[2] Click on a cached slice (1 point, 3 candidate masks at {img.shape[0]}x{img.shape[1]}, median of {n})")
    print(f"    official SamPredictor.predict    {mo * 1e3:6.1f} ms")
    print(f"    ours SlicePredictor.predict      {mu * 1e3:6.1f} ms   ratio {mu / mo:.3f}"
          f"   (masks cover {100 * frac:.1f} % of the slice)")
    print(f"    on the same features, our 3 masks differ from official's in {diff} of {ref.size} pixels")
    return {"official_ms": mo * 1e3, "ours_ms": mu * 1e3, "ratio": mu / mo, "mask_fraction": frac, "diff": diff}


def bench_click_sam2(official, ours, img, labels, n=40):
    """A click on the slice both predictors hold: SAM2ImagePredictor.predict vs ours; masks compared."""
    from napari_sam.synthetic import interior_point

    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    r, c = interior_point(labels == int(ids[np.argmax(counts)]))
    pt = np.array([[c, r]], np.float32)
    official.predict(pt, np.array([1]), multimask_output=True)
    ours.predict(points=[[r, c]])
    t_off = timed(lambda: official.predict(pt, np.array([1]), multimask_output=True), n)
    t_ours = timed(lambda: ours.predict(points=[[r, c]]), n)
    ref, _, _ = official.predict(pt, np.array([1]), multimask_output=True)
    diff = int((ref != ours.predict(points=[[r, c]]).masks[0]).sum())
    mo, mu = statistics.median(t_off), statistics.median(t_ours)
    print(f"    click (1 point, 3 masks, median of {n}): official {mo * 1e3:.1f} ms, ours {mu * 1e3:.1f} ms, "
          f"ratio {mu / mo:.3f}; masks differ in {diff} of {ref.size} pixels")


def bench_upsampling(size, n=30):
    """Official postprocess_masks + threshold vs core.fast_post, for objects of a few sizes."""
    import torch.nn.functional as F

    from napari_sam.core.fast_post import masks_from_low_res

    s = 1024 / size
    inp = (int(size * s + 0.5),) * 2
    out = {}
    print(f"\n[2b] Upsampling 3 candidate masks to {size}x{size} (official: 1024 canvas, crop, resize; ours: cropped)")
    for frac in (0.002, 0.02, 0.1, 0.5):
        side = max(2, int(256 * frac**0.5))
        low = torch.full((1, 3, 256, 256), -8.0)
        low[..., 100 : 100 + side, 90 : 90 + side] = 5.0

        def official():
            m = F.interpolate(low, (1024, 1024), mode="bilinear", align_corners=False)[..., : inp[0], : inp[1]]
            return (F.interpolate(m, (size, size), mode="bilinear", align_corners=False) > 0).numpy()

        same = np.array_equal(official(), masks_from_low_res(low, (1024, 1024), inp, (size, size)))
        to = statistics.median(timed(official, n))
        tf = statistics.median(timed(lambda: masks_from_low_res(low, (1024, 1024), inp, (size, size)), n))
        print(f"    object {100 * frac:5.1f} % of slice: official {to * 1e3:6.2f} ms  ours {tf * 1e3:6.2f} ms"
              f"  identical masks: {same}")
        out[frac] = (to * 1e3, tf * 1e3, same)
    return out


def bench_propagation(model, n_slices=32, size=256):
    from napari_sam.core.cache import EmbeddingCache
    from napari_sam.core.precompute import precompute
    from napari_sam.core.predictor import SlicePredictor
    from napari_sam.synthetic import interior_point, make_stack

    try:
        from napari_sam.core.propagate import propagate_labels
    except ImportError as e:
        print(f"\n[3] Propagation: pending (napari_sam.core.propagate not importable: {e})")
        return None
    st = make_stack((n_slices, size, size), seed=11, radius_range=(14, 26), density=0.35)
    mid = n_slices // 2
    ids, counts = np.unique(st.labels[mid][st.labels[mid] > 0], return_counts=True)
    chosen = [int(i) for i in ids[np.argsort(-counts)][:8]]
    prompts = {k + 1: {mid: {"points": [interior_point(st.labels[mid] == o)], "labels": [1]}}
               for k, o in enumerate(chosen)}
    cache = EmbeddingCache(1 << 62)
    pred = SlicePredictor(model)
    list(precompute(pred, st.image, start=mid, cache=cache))
    res = {}
    print(f"\n[3] Propagation through {n_slices} cached slices ({size}x{size}, model {model.name}, from slice {mid})")
    for k in (1, 8):
        sub = {o: prompts[o] for o in list(prompts)[:k]}
        propagate_labels(st.image, sub, model=model, cache=cache)  # warm
        t = statistics.median(timed(lambda: propagate_labels(st.image, sub, model=model, cache=cache), 3))
        res[k] = t
        print(f"    {k} object{'s' if k > 1 else ' '}: {t:6.2f} s  ({t / n_slices * 1e3:5.1f} ms a slice)")
    print(f"    8 objects cost {res[8] / res[1]:.2f}x one object (decoded in one batch per slice)")
    bench_many_masks(model)
    return res


def bench_many_masks(model, size=512):
    """Every nucleus of a 512 px slice decoded again with its previous logits as mask prompt, each in its
    window (as propagation decodes them): the mask prompts are embedded on the windows only."""
    from napari_sam.core.batch_decode import decode_objects
    from napari_sam.core.predictor import SlicePredictor
    from napari_sam.core.prompts import ObjectPrompt
    from napari_sam.synthetic import interior_point, make_image

    st = make_image((size, size), seed=7, radius_range=(6, 14), density=0.5)
    pred = SlicePredictor(model)
    pred.set_image(st.image)
    ids = np.unique(st.labels)[1:]
    clicks, boxes = [], []
    for i in ids:
        m = st.labels == i
        r, c = np.nonzero(m)
        clicks.append(ObjectPrompt(points=[interior_point(m)], labels=[1]))
        boxes.append((r.min() - 4, c.min() - 4, r.max() + 4, c.max() + 4))
    first = decode_objects(pred, clicks, multimask=False, windows=boxes)
    again = [ObjectPrompt(points=p.points, labels=p.labels, mask=d.low_res) for p, d in zip(clicks, first)]
    t = min(timed(lambda: decode_objects(pred, again, windows=boxes), 3))
    print(f"    {len(ids)} nuclei of one {size}x{size} slice, each with its mask prompt, decoded in windows: {t:.2f} s "
          "(best of 3)")


def bench_memory(n=32):
    import resource

    from napari_sam.core.cache import EmbeddingCache
    from napari_sam.core.disk_cache import DiskCache, Geometry
    from napari_sam.core.predictor import Embedding

    cache = EmbeddingCache(1 << 62)
    rss0 = _rss()
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        f = torch.randn(1, 256, 64, 64, generator=g)
        cache.put(i, Embedding(f, (512, 512), (1024, 1024), (1024, 1024), np.zeros((512, 512), np.uint8)))
    rss1 = _rss()
    with tempfile.TemporaryDirectory() as d:
        e = cache.get(0)
        settings = {"model_sha256": "x", "stack_shape": [n, 512, 512], "channel_axis": None}
        disk = DiskCache.create(Path(d) / "c.zarr", settings, Geometry.of(e))
        for i in range(4):
            disk.put(i, f"{i + 1:032x}", cache.get(i))
        on_disk = disk.nbytes_on_disk() / 4
        t_disk = statistics.median(timed(lambda: disk.get(2, f"{3:032x}"), 20))
    t_mem = statistics.median(timed(lambda: cache.get(5), 20))
    print(f"\n[4] Memory per cached ViT-B slice (512x512 slice, {n} slices)")
    print(f"    in memory: {cache.nbytes / n / 2**20:.2f} MiB (fp16 features 2.00 MiB + normalised slice "
          f"{512 * 512 / 2**20:.2f} MiB); process RSS grew {(rss1 - rss0) / n / 2**20:.2f} MiB a slice")
    print(f"    on disk (zarr, default compression): {on_disk / 2**20:.2f} MiB a slice")
    print(f"    a cached slice back as fp32 features: from memory {t_mem * 1e3:.1f} ms, from disk {t_disk * 1e3:.1f} ms")
    print(f"    peak RSS of this process so far: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    return {"memory_mib": cache.nbytes / n / 2**20, "rss_mib": (rss1 - rss0) / n / 2**20, "disk_mib": on_disk / 2**20}


def _rss() -> int:
    """Resident memory now, after handing freed heap back to the OS (glibc)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bench_embedded(size=512, n=10):
    from napari_sam.core.models import load_model
    from napari_sam.core.predictor import SlicePredictor

    shipped = ROOT / "src/napari_sam/weights/embedded.pt"
    path = shipped if shipped.exists() else Path("/work/train/embedded.pt.partial")
    if not path.exists():
        print("\n[5] Embedded model: weights not found")
        return None, None
    name = "embedded" if path == shipped else str(path)
    model = load_model(name, device="cpu")  # int8 encoder where the CPU has it (core.int8)
    fp32 = load_model(name, device="cpu", int8=False)
    img, _ = slice_image(size, seed=5)
    preds = {m.precision: SlicePredictor(m) for m in (fp32, model)}
    t = {k: [] for k in preds}
    for k, p in preds.items():
        p.embed(img)
    for _ in range(n):  # interleaved: the machine's drift falls on both
        for k, p in preds.items():
            t[k] += timed(lambda: p.embed(img), 1)
    med = {k: statistics.median(v) for k, v in t.items()}
    print(f"\n[5] Embedded model ({path.name}): {size}x{size} slice embedding, median of {n} (interleaved):")
    for k in preds:
        print(f"    {k:8s} encoder: {med[k] * 1e3:.0f} ms (min {min(t[k]) * 1e3:.0f}, max {max(t[k]) * 1e3:.0f})")
    if model.precision != fp32.precision:
        a, b = (preds[k].embed(img).features for k in (model.precision, fp32.precision))
        rel = float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())
        print(f"    int8 / fp32: {med['int8'] / med['float32']:.2f}x the time; embeddings differ by {rel:.1%} (RMS)")
    big, _ = slice_image(2 * size, seed=6)
    for m, scale in ((model, None), (fp32, None), (model, 1.0)):  # 2x: more than one encoder pass, tiles
        p = SlicePredictor(m, input_scale=scale)
        emb = p.embed(big)
        tb = timed(lambda: p.embed(big), 3)
        print(f"    {2 * size}x{2 * size} slice at {p.input_scale:g}x, {m.precision} (encoder input {emb.input_size[0]} px): "
              f"median {statistics.median(tb):.2f} s of 3; embedding {tuple(emb.features.shape[1:])}, "
              f"{emb.features.numel() * 2 / 2**20:.1f} MiB as fp16")
    bench_api_clicks(model, img)
    return model, med[model.precision]


def bench_api_clicks(model, img, n=20):
    import napari_sam
    from napari_sam import api

    rng = np.random.default_rng(0)
    clicks = rng.integers(32, img.shape[0] - 32, (n, 2))

    def loop(reuse: bool):
        api.EMBEDDINGS.clear()
        t = time.perf_counter()
        for p in clicks:
            if not reuse:
                api.EMBEDDINGS.clear()
            napari_sam.segment(img, points=[p], model=model, input_scale=None)
        return time.perf_counter() - t

    loop(True)
    reused, cleared = min(loop(True) for _ in range(2)), min(loop(False) for _ in range(2))
    print(f"    {n} clicks through napari_sam.segment, one call each: {reused:.2f} s with the slice's embedding kept "
          f"(api.EMBEDDINGS), {cleared:.2f} s encoding it every call; ratio {reused / cleared:.2f}x")


def vit_b_model(checkpoint: str | None, tmp: Path):
    from napari_sam.core.models import load_model

    if checkpoint:
        return load_model(checkpoint, device="cpu"), f"checkpoint {checkpoint}"
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"](checkpoint=None)
    path = tmp / "vit_b_random.pth"
    torch.save(sam.state_dict(), path)
    del sam
    return load_model(str(path), device="cpu"), "randomly initialised ViT-B (weights do not change the time)"


def mobile_sam_model(tmp: Path):
    from napari_sam.core.mobile_sam import build_mobile_sam
    from napari_sam.core.models import load_model

    torch.manual_seed(0)
    path = tmp / "mobile_sam_random.pt"
    torch.save(build_mobile_sam("5m").state_dict(), path)
    return load_model(str(path), device="cpu")


def sam2_model(tmp: Path):
    from napari_sam.core.models import load_model
    from napari_sam.core.sam2_model import build_sam2_model

    torch.manual_seed(0)
    path = tmp / "sam2.1_hiera_tiny_random.pt"
    torch.save({"model": build_sam2_model("sam2.1_hiera_tiny").state_dict()}, path)
    return load_model(str(path), device="cpu")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="an official-format ViT-B checkpoint (default: random ViT-B)")
    ap.add_argument("--size", type=int, default=512, help="slice size for the ViT-B runs")
    ap.add_argument("--repeats", type=int, default=3, help="embedding runs each for official and ours")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: encoder,click,propagation,memory,embedded,mobile,sam2")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    print(f"machine: {machine()}")
    print(f"start: {load()}")
    with tempfile.TemporaryDirectory() as d:
        emb_model = None
        if "embedded" not in skip or "propagation" not in skip:
            emb_model, _ = bench_embedded() if "embedded" not in skip else (None, None)
        if not {"encoder", "click"} <= skip:
            model, what = vit_b_model(args.checkpoint, Path(d))
            print(f"\nViT-B: {what}")
            img, labels = slice_image(args.size)
            official, ours, _ = bench_encoder(model, img, args.repeats)
            if "click" not in skip:
                bench_click(official, ours, img, labels)
                bench_upsampling(args.size)
            del official, ours, model
        if "mobile" not in skip:
            model = mobile_sam_model(Path(d))
            print("\nMobileSAM: randomly initialised TinyViT-5M + SAM decoder (weights do not change the time)")
            bench_encoder(model, slice_image(args.size)[0], args.repeats, title="[6] MobileSAM")
            del model
        if "sam2" not in skip:
            model = sam2_model(Path(d))
            print("\nSAM 2.1: randomly initialised Hiera-tiny (weights do not change the time)")
            img, labels = slice_image(args.size)
            official, ours, _ = bench_encoder(model, img, args.repeats, title="[7] SAM 2.1 Hiera-tiny")
            # both now hold the slice: the official predictor as uint8 RGB, ours normalised the same way
            bench_click_sam2(official, ours, img, labels)
            del model, official, ours
        if "propagation" not in skip:
            if emb_model is None:
                from napari_sam.core.models import load_model

                shipped = ROOT / "src/napari_sam/weights/embedded.pt"
                emb_model = load_model("embedded" if shipped.exists() else "/work/train/embedded.pt.partial", device="cpu")
            bench_propagation(emb_model)
        if "memory" not in skip:
            bench_memory()
    print(f"\nend: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
