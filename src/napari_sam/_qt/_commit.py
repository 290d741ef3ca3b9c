"""Write chosen masks into a Labels layer on one slice, through napari's history.

Every change goes through ``Labels.data_setitem`` inside one
``block_history`` so a whole commit is one Ctrl-Z / Shift-Ctrl-Z step. The
prompts that made each object are recorded in ``labels.metadata["napari_sam"]``
(the writer saves them beside the TIFF).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_sam.core.commit import next_label_id, plan_commit

from ._plane import Plane

META = "napari_sam"


class CommitError(ValueError):
    """The commit cannot be done; the message says why and what to do."""


@dataclass
class CommitReport:
    ids: list[int]
    pixels: int
    kept: int = 0  # mask pixels not written because they belong to another label
    cleared: int = 0  # pixels of a refined label set back to 0
    changed: tuple = ()  # nD fancy index of the pixels whose value changed


def check_target(labels, shape: tuple[int, ...]) -> None:
    """Refuse a Labels layer whose data does not match the image's (spatial) shape."""
    got = tuple(np.shape(labels.data[0] if labels.multiscale else labels.data))
    if got != tuple(shape):
        raise CommitError(
            f"labels layer {labels.name!r} has shape {got} but the image has {tuple(shape)}: "
            f"choose a matching Labels layer or '(new layer)'"
        )
    if labels.multiscale:
        raise CommitError(f"labels layer {labels.name!r} is multiscale: SAM commits into single-scale labels only")
    why = read_only(labels.data)
    if why:
        raise CommitError(f"labels layer {labels.name!r} is read-only ({why}): nothing can be written into it; "
                          f"choose another Labels layer or '(new layer)'")


def read_only(data) -> str:
    """Why an array cannot be written into ("" when it can): a dask array, a read-only numpy or zarr array."""
    if hasattr(data, "dask"):
        return "a dask array, computed lazily"
    if isinstance(data, np.ndarray) and not data.flags.writeable:
        return "a read-only numpy array, e.g. a file opened for reading"
    if getattr(data, "read_only", False) is True:
        return "a zarr array opened for reading"
    return ""


def next_id(labels) -> int:
    """The first free object id of a Labels layer (its data may be a zarr array on disk: read a block at a
    time)."""
    return next_label_id(labels.data)


def check_fits(labels, top: int) -> None:
    """Refuse label ``top`` when the layer's integer type cannot hold it."""
    info = np.iinfo(labels.data.dtype) if np.issubdtype(labels.data.dtype, np.integer) else None
    if info is not None and top > info.max:
        raise CommitError(
            f"label {top} does not fit into {labels.name!r} ({labels.data.dtype}, at most {info.max}); "
            f"convert the layer to a larger integer type"
        )


def commit_masks(
    labels,
    plane: Plane,
    masks: list[np.ndarray],
    *,
    label: int | None = None,
    overwrite: bool = False,
    replace: int | None = None,
) -> CommitReport:
    """Write ``masks`` ((H, W) bool each) into ``labels`` on ``plane`` only.

    label None: each mask becomes a new object (largest id + 1, + 2, ...);
    an int: every mask goes into that label. replace: a label being refined
    (its pixels this mask no longer covers are cleared).
    """
    existing = np.array(labels.data[plane.index], copy=True)  # before the commit (numpy data gives a view)
    if label is None:
        first = next_id(labels)
        ids = list(range(first, first + len(masks)))
    else:
        ids = [int(label)] * len(masks)
    check_fits(labels, max(ids))
    writes = plan_commit(existing, masks, ids, overwrite=overwrite, replace=replace)
    moved = [(w.rows[d], w.cols[d]) for w in writes for d in [existing[w.rows, w.cols] != w.value]]
    changed = plane.full_index(*(np.concatenate(a) for a in zip(*moved))) if moved else ()
    with labels.block_history():
        for w in writes:
            labels.data_setitem(plane.full_index(w.rows, w.cols), w.value)
    written = sum(w.size for w in writes if w.value != 0)
    cleared = sum(w.size for w in writes if w.value == 0)
    wanted = int(sum(int(m.sum()) for m in masks))
    already = sum(int((m & (existing == v)).sum()) for m, v in zip(masks, ids))
    return CommitReport(ids=ids, pixels=written, kept=max(0, wanted - written - already), cleared=cleared,
                        changed=changed)


def commit_label_image(labels, plane: Plane, image: np.ndarray, existing=None) -> tuple[CommitReport, np.ndarray]:
    """Write the objects of a label image ((H, W), ids 1..n) into ``labels`` on ``plane`` only, where the layer
    is background, as new ids (largest + 1, ... in the image's order), in one history step. An object left
    with no pixel gets no id. Returns (the report, the image's ids written, in the order of ``report.ids``).
    existing: the layer's slice on ``plane`` as the caller has just read it (read here if None).

    One pass over the slice, whatever the number of objects (``commit_masks`` takes one mask per object)."""
    existing = np.asarray(labels.data[plane.index]) if existing is None else existing
    take = (image > 0) & (existing == 0)
    r, c = np.nonzero(take)
    present = np.unique(image[r, c])
    if not len(present):
        return CommitReport(ids=[], pixels=0, kept=int((image > 0).sum())), present
    first = next_id(labels)
    check_fits(labels, first + len(present) - 1)
    lut = np.zeros(int(image.max()) + 1, np.int64)
    lut[present] = np.arange(first, first + len(present))
    index = plane.full_index(r, c)
    with labels.block_history():
        labels.data_setitem(index, lut[image[r, c]])
    return CommitReport(ids=lut[present].tolist(), pixels=len(r), kept=int((image > 0).sum()) - len(r),
                        changed=index), present


def record_objects(labels, records: list[dict]) -> None:
    """Append what made each committed object to ``labels.metadata``."""
    md = labels.metadata
    entry = md.get(META)
    if not isinstance(entry, dict):
        entry = {"objects": []}
    entry.setdefault("objects", []).extend(records)
    md[META] = entry


def object_record(label: int, plane: Plane, prompt, *, score: float | None, token: int | None, model,
                  **extra) -> dict:
    """One committed object's provenance, in the labels' data coordinates.

    prompt: core.prompts.ObjectPrompt (row, col) on the plane; points and the box
    are stored as full nD data coordinates of the labels array. score, token: SAM's
    predicted IoU and output index of the committed mask (None: several masks, e.g. one per slice).
    extra: more keys for the record.
    """

    def full(rc):
        rc = np.asarray(rc, float).reshape(-1, 2)
        out = np.tile(plane.offset(), (len(rc), 1))
        out[:, plane.axes[0]], out[:, plane.axes[1]] = rc[:, 0], rc[:, 1]
        return out.round(3).tolist()

    rec = {
        "label": int(label),
        "plane": {"axes": [a for a, _ in plane.fixed], "index": [i for _, i in plane.fixed]},
        "points": full(prompt.points),
        "point_labels": [int(v) for v in prompt.labels],
        "box": None if prompt.box is None else full(prompt.box.reshape(2, 2)),
        "mask_prompt": prompt.mask is not None,
        "sam_output": None if token is None else int(token),
        "predicted_iou": None if score is None else round(float(score), 4),
        **extra,
    }
    if model is not None:
        rec["model"] = {"name": model.name, "sha256": model.checksum}
    return rec
