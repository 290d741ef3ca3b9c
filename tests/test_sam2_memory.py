"""Propagation with SAM 2's memory (``core.sam2_memory``, ``method="memory"``, ``--memory``).

No SAM 2 weights can be downloaded here: a randomly initialised SAM 2.1
Hiera-tiny stands in, so what is checked is that the stack's slices reach
Meta's SAM2VideoPredictor exactly as its own loader makes frames from a
folder of JPEGs and that its masks come back unchanged, on the right slices
and ids, without touching other objects; cancel and refusals. Whether SAM 2's
memory follows nuclei better than slice-by-slice prompting cannot be
measured without real weights (docs/propagation.md). The model takes a
512 x 512 input square instead of Meta's 1024 (``SIDE``; the same weights):
on a CPU its image encoder and memory attention are what these tests spend
their time on, ~4x less at a quarter of the pixels.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sam2")

from napari_sam.core.models import load_model  # noqa: E402

from ._sam_helpers import save_sam2  # noqa: E402

CLICK = (90.0, 110.0)  # (row, col) on slice 2
SIDE = 512  # SAM 2's input square in these tests (Meta's configs: 1024)


def _at_side(build, *args, hydra_overrides_extra=(), **kwargs):
    return build(*args, hydra_overrides_extra=[*hydra_overrides_extra, f"++model.image_size={SIDE}"], **kwargs)


@pytest.fixture(scope="module", autouse=True)
def _sam2_on_a_smaller_square():
    """Every SAM 2 model built in this module (loaded from a file, by the API, the CLI or the widget, and the
    video predictor on its weights) takes a SIDE x SIDE input. SAM 2's weights do not depend on the input size
    (Hiera interpolates its position embedding, RoPE recomputes its frequencies, the prompt encoder and memory
    sizes follow ``image_size``), and the frames the video predictor loads from JPEGs are resized to its
    ``image_size`` as ``core.sam2_memory.Frames`` resizes the slices. SAM2ImagePredictor (the widget's
    embeddings ahead of time) writes its feature map sizes for 1024: set from ``image_size`` here, as Meta's
    are (1024 / 4, / 8, / 16)."""
    from functools import partial

    import sam2.build_sam
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    init = SAM2ImagePredictor.__init__

    def image_predictor_init(self, sam_model, *args, **kwargs):
        init(self, sam_model, *args, **kwargs)
        self._bb_feat_sizes = [(sam_model.image_size // s,) * 2 for s in (4, 8, 16)]

    with pytest.MonkeyPatch.context() as mp:
        for name in ("build_sam2", "build_sam2_video_predictor"):
            mp.setattr(sam2.build_sam, name, partial(_at_side, getattr(sam2.build_sam, name)))
        mp.setattr(SAM2ImagePredictor, "__init__", image_predictor_init)
        yield


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """(model, JPEG folder, the frames as read back (z, y, x, 3) uint8) for a 5-slice stack of a bright
    block on noise, drifting one pixel a slice."""
    from PIL import Image

    d = tmp_path_factory.mktemp("sam2mem")
    _, path = save_sam2(d / "sam2.1_hiera_tiny.pt")
    folder = d / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for z in range(5):
        im = (rng.random((200, 240)) * 50).astype(np.uint8)
        im[60 + z : 120 + z, 80:150] = 200
        Image.fromarray(im).convert("RGB").save(folder / f"{z:05d}.jpg", quality=95)
    frames = np.stack([np.array(Image.open(folder / f"{z:05d}.jpg").convert("RGB")) for z in range(5)])
    model = load_model(path, device="cpu")
    assert model.sam.image_size == SIDE
    return model, folder, frames


@pytest.fixture(scope="module")
def official(video):
    """Meta's video predictor on the JPEG folder, as its notebook runs it: a click on slice 2, forward, then
    backward; each slice's mask from the pass that reached it from the click."""
    from napari_sam.core.sam2_memory import video_predictor

    model, folder, _ = video
    vp = video_predictor(model)
    with torch.inference_mode():
        state = vp.init_state(str(folder))
        vp.add_new_points_or_box(state, frame_idx=2, obj_id=3, points=np.array([CLICK[::-1]], np.float32),
                                 labels=np.array([1], np.int32))
        masks = {}
        for f, ids, logits in vp.propagate_in_video(state, start_frame_idx=2):
            masks[f] = (logits[0, 0] > 0).numpy()
        for f, ids, logits in vp.propagate_in_video(state, start_frame_idx=2, reverse=True):
            if f < 2:
                masks[f] = (logits[0, 0] > 0).numpy()
    return np.stack([masks[z] for z in range(5)])


def test_memory_propagation_gives_the_sam2_video_predictors_masks_and_keeps_other_objects(video, official):
    import napari_sam

    model, _, frames = video
    existing = np.zeros(frames.shape[:3], np.uint16)
    existing[0, :40, :40] = 7  # an object committed before: never taken
    existing[4, 150:, 200:] = 7
    before = existing.copy()
    records = []
    out = napari_sam.propagate(frames, {3: {2: {"points": [CLICK]}}}, model=model, method="memory",
                               channel_axis=-1, normalize="none", labels=existing, progress=records.append)
    assert np.array_equal(existing, before)  # the caller's labels are not written into
    assert official.any(axis=(1, 2)).all()  # the official run gave a mask on every slice
    assert set(np.unique(out)) == {0, 3, 7}
    assert np.array_equal(out == 7, before == 7)
    assert np.array_equal(out == 3, official & (before == 0))
    assert [r.done for r in records] == list(range(1, 7)) and {r.total for r in records} == {6}
    assert [r.z for r in records] == [2, 3, 4, 2, 1, 0]
    assert records[0].stage == "prompted" and records[-1].labels is not None


def test_the_video_predictor_shares_the_loaded_models_weights(video):
    from napari_sam.core.sam2_memory import video_predictor

    model = video[0]
    vp = video_predictor(model)
    assert vp is video_predictor(model)  # built once per model
    ours, theirs = dict(model.sam.named_parameters()), dict(vp.named_parameters())
    assert ours.keys() == theirs.keys()
    assert all(ours[k].data_ptr() == theirs[k].data_ptr() for k in ours)  # no second copy in memory


def test_cancelling_memory_propagation_leaves_the_labels_as_they_were(video):
    from napari_sam.core.predictor import SlicePredictor
    from napari_sam.core.sam2_memory import propagate_memory

    model, _, frames = video
    labels = np.zeros(frames.shape[:3], np.uint16)
    labels[1, 10:20, 10:20] = 5
    before = labels.copy()
    gen = propagate_memory(SlicePredictor(model, normalize="none"), frames, {5: {1: {"points": [CLICK]}}},
                           labels=labels, channel_axis=-1, z_range=(0, 3))
    first = next(gen)
    assert first.z == 1 and (first.labels_slice == 5).sum() > 100  # object 5 re-propagated on its slice
    gen.close()
    assert np.array_equal(labels, before)


def test_objects_beyond_the_state_budget_run_in_groups_and_give_the_same_labels(video):
    from napari_sam.core.predictor import SlicePredictor
    from napari_sam.core.sam2_memory import STATE_BYTES, object_groups, propagate_memory

    assert object_groups([1, 2, 3, 4, 5], 64, 3 * 64 * STATE_BYTES) == [[1, 2, 3], [4, 5]]
    assert object_groups([1, 2, 3], 64) == [[1, 2, 3]]  # the default budget (2 GiB) holds them
    assert object_groups([1, 2], 10**6, 1) == [[1], [2]]  # at least one object a run
    model, _, frames = video
    prompts = {1: {1: {"points": [CLICK]}}, 2: {1: {"points": [[30.0, 200.0]], "labels": [1]}}}
    pred = SlicePredictor(model, normalize="none")

    def run(budget):
        gen, records = propagate_memory(pred, frames[:3], prompts, channel_axis=-1, max_state_bytes=budget), []
        while True:
            try:
                records.append(next(gen))
            except StopIteration as fin:
                return fin.value, records

    together, rec1 = run(1 << 31)
    apart, rec2 = run(1)  # one object per run: the slices are encoded again for the second
    assert len(rec1) == 4 and len(rec2) == 8 and rec2[-1].total == 8 and rec2[-1].labels is not None
    assert {1, 2} <= set(np.unique(together))
    # SAM 2 follows objects independently; batched and single runs differ only by float rounding
    assert (together != apart).mean() < 0.005


def test_where_sam2_loses_an_object_beyond_its_prompts_is_reported_once():
    """The bookkeeping of a pass over what SAM 2's ``propagate_in_video`` yields (frame, ids, logits):
    constructed logits stand in for a trained model's, which would drop objects by its object score
    (random weights never do). Object 1 (prompted on slice 1) is gone from slice 4 on; object 2 never."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from napari_sam.core.label_canvas import LabelCanvas
    from napari_sam.core.prompts import ObjectPrompt
    from napari_sam.core.sam2_memory import _run_pass

    class Yields:
        def propagate_in_video(self, state, start_frame_idx, reverse):
            for f in range(start_frame_idx, 6):
                lg = torch.full((2, 1, 8, 8), -5.0)
                if f <= 3:
                    lg[0, 0, 2:5, 2:5] = 5.0
                lg[1, 0, 5:7, 5:7] = 5.0
                yield f, [1, 2], lg

    canvas = LabelCanvas((6, 8, 8), None, [1, 2])
    objs = {o: {1: ObjectPrompt(np.array([[3.0, 3.0]]), [1])} for o in (1, 2)}
    steps = list(_run_pass(Yields(), SimpleNamespace(autocast=nullcontext), None, canvas, objs, {1: [1], 2: [1]},
                           "up", 1, False, (0, 6), 1.0))
    assert [z for z, _, _ in steps] == [1, 2, 3, 4, 5]
    assert [e for _, _, ended in steps for e in ended] == [(1, "up", "SAM 2 finds no object here (its object score)", 4)]
    assert (canvas.labels == 1).any((1, 2)).tolist() == [False, True, True, True, False, False]


def test_memory_propagation_needs_a_sam2_model_and_says_so(stack_with_clicks):
    import napari_sam

    stack, prompts = stack_with_clicks
    with pytest.raises(ValueError, match=r"needs a SAM 2 / 2.1 checkpoint, and embedded is not one.*method='slices'"):
        napari_sam.propagate(stack, prompts, method="memory")
    with pytest.raises(ValueError, match="method must be 'slices' or 'memory', not 'video'"):
        napari_sam.propagate(stack, prompts, method="video")


def test_options_of_slice_by_slice_propagation_are_refused_with_memory(video):
    """min_score/stop/step gave a TypeError naming an internal function; refine was silently ignored."""
    import napari_sam

    model, _, frames = video
    prompts = {1: {1: {"points": [[90.0, 110.0]]}}}
    for extra in ({"min_score": 0.5}, {"refine": True}):
        with pytest.raises(ValueError, match=rf"{next(iter(extra))} only apply to method='slices'"):
            napari_sam.propagate(frames[:4, ..., 0], prompts, model=model, method="memory", **extra)


@pytest.fixture
def stack_with_clicks():
    from napari_sam.synthetic import make_stack

    st = make_stack((4, 64, 64), seed=3, radius_range=(8, 12), density=0.3)
    return st.image, {1: {1: {"points": [[32, 32]]}}}


def test_cli_memory_writes_what_the_api_gives_and_refuses_what_it_cannot_do(video, tmp_path, capsys):
    import json

    import tifffile

    import napari_sam
    from napari_sam.cli import main

    model, _, frames = video
    stack = frames[:4, ..., 0]  # grey (z, y, x)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    (tmp_path / "p.csv").write_text("z,y,x,object\n1,90,110,4\n")
    args = ["segment", str(tmp_path / "s.tif"), "--points", str(tmp_path / "p.csv"), "--propagate"]
    assert main([*args, "--memory", "--model", str(model.path), "--out", str(tmp_path / "a.tif")]) == 0
    want = napari_sam.propagate(stack, {4: {1: {"points": [[90, 110]]}}}, model=model, method="memory")
    assert np.array_equal(tifffile.imread(tmp_path / "a.tif"), want) and (want == 4).any(axis=(1, 2)).all()
    record = json.loads((tmp_path / "a.prompts.json").read_text())
    assert record["mode"] == "propagate (SAM 2 memory)"
    assert "propagate in video" not in capsys.readouterr().err, "SAM 2's own bar is silenced: ours is the progress"
    # the embedded model has no memory: refused before anything is written
    assert main([*args, "--memory", "--out", str(tmp_path / "b.tif")]) == 2
    err = capsys.readouterr().err
    assert "--memory: propagation with SAM 2's memory needs a SAM 2 / 2.1 checkpoint" in err
    assert "leave out --memory" in err and not (tmp_path / "b.tif").exists()
    assert main([*args[:4], "--memory", "--out", str(tmp_path / "c.tif")]) == 2
    assert "--memory only applies with --propagate" in capsys.readouterr().err


@pytest.mark.gui
def test_widget_propagates_with_sam2_memory_as_the_api_does(video, make_napari_viewer, qtbot):
    from napari.utils._proxies import PublicOnlyProxy

    import napari_sam
    from napari_sam._qt.widget import SamWidget

    model, _, frames = video
    stack = frames[:4, ..., 0].copy()
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="s")
    widget = SamWidget(PublicOnlyProxy(viewer), model=str(model.path))
    viewer.window.add_dock_widget(widget, name="SAM")
    qtbot.waitUntil(lambda: widget.model is not None and not widget.busy, timeout=60000)
    assert widget._ui.propagate_memory.isEnabled() and not widget._ui.propagate_memory.isChecked()
    labels = viewer.add_labels(np.zeros(stack.shape, np.uint32), name="curated")
    i = widget._ui.labels.findText("curated")
    widget._ui.labels.setCurrentIndex(i)
    widget._ui.labels.activated.emit(i)
    viewer.dims.current_step = (1, 0, 0)
    mask = np.zeros(stack.shape[1:], bool)
    mask[61:121, 80:150] = True  # the block on slice 1, committed as label 4
    r, c = np.nonzero(mask)
    with labels.block_history():
        labels.data_setitem((np.full(len(r), 1), r, c), 4)
    labels.selected_label = 4
    widget._ui.propagate_memory.setChecked(True)
    widget._ui.propagate_object.click()
    assert "with SAM 2's memory" in widget._ui.status.text()
    qtbot.waitUntil(lambda: not widget.propagating, timeout=120000)
    got = np.array(labels.data, copy=True)
    want = napari_sam.propagate(stack, {4: {1: {"mask": mask}}}, model=model, method="memory")
    assert np.array_equal(got, want) and (got == 4).any(axis=(1, 2)).all()
    widget._ui.undo.click()  # one undo step, as for the default propagation
    assert np.array_equal(labels.data == 4, np.broadcast_to(mask, stack.shape) & (np.arange(4) == 1)[:, None, None])
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    viewer.window.remove_dock_widget(widget)


def test_memory_propagation_refuses_two_objects_on_one_click_and_ids_the_labels_cannot_hold(video):
    """As slice-by-slice propagation does (core.propagate_inputs.check_distinct, check_fits): SAM 2 followed
    both objects from one click, splitting the block between them, and a uint16 labels array got id 70000
    wrapped."""
    from napari_sam.core.predictor import SlicePredictor
    from napari_sam.core.sam2_memory import propagate_memory

    model, _, frames = video
    pred = SlicePredictor(model, normalize="none")
    same = {1: {1: {"points": [CLICK]}}, 2: {1: {"points": [CLICK]}}}
    with pytest.raises(ValueError, match=r"objects 1 and 2 have a positive click at \(row=90, col=110\) on slice 1"):
        next(propagate_memory(pred, frames, same, channel_axis=-1))
    labels = np.zeros(frames.shape[:3], np.uint16)
    with pytest.raises(ValueError, match="object id 70000 does not fit the labels' dtype uint16"):
        next(propagate_memory(pred, frames, {70000: {1: {"points": [CLICK]}}}, channel_axis=-1, labels=labels))
