"""The widget's Qt controls: built here, wired in ``widget.py``."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_sam.core.predictor import INPUT_SCALE_RANGE  # (imports no torch)

NEW_LAYER = "(new layer)"
FROM_FILE = "from file…"
DEVICES = ["auto", "cpu", "cuda", "mps"]


def _combo(tip: str) -> QComboBox:
    c = QComboBox()
    c.setToolTip(tip)
    c.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    c.setMinimumContentsLength(12)
    c.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
    return c


def _choice(parent: QWidget, first: str, second: str, *, label: str = "", tips=("", "")):
    """Two exclusive radio buttons in a row (the first checked): (first, second, group, row layout)."""
    row = QHBoxLayout()
    a, b = QRadioButton(first), QRadioButton(second)
    a.setChecked(True)
    group = QButtonGroup(parent)
    if label:
        row.addWidget(QLabel(label))
    for button, tip in zip((a, b), tips):
        group.addButton(button)
        button.setToolTip(tip)
        row.addWidget(button)
    row.addStretch(1)
    return a, b, group, row


class Controls:
    """Every control of the SAM widget, laid out in ``parent``."""

    def __init__(self, parent: QWidget, models: dict[str, str]):
        """models: registry name -> description (each item's tooltip)."""
        root = QVBoxLayout(parent)
        root.setContentsMargins(6, 6, 6, 6)

        setup = QGroupBox("Image and model")
        form = QFormLayout(setup)
        self.image = _combo("The image layer SAM segments (2D, z-stack, t/z, RGB)")
        self.model = _combo("SAM model: 'embedded' ships with napari-sam; others download once")
        for name, description in models.items():
            self.model.addItem(name, name)
            self.model.setItemData(self.model.count() - 1, description, Qt.ItemDataRole.ToolTipRole)
        self.model.addItem(FROM_FILE, FROM_FILE)
        self.model.setItemData(self.model.count() - 1, "a SAM, MobileSAM or SAM 2 checkpoint file on disk",
                               Qt.ItemDataRole.ToolTipRole)
        self.device = _combo("Where SAM runs: auto = CUDA, then Apple MPS, then CPU")
        self.device.addItems(DEVICES)
        form.addRow("Image", self.image)
        form.addRow("Model", self.model)
        form.addRow("Device", self.device)
        self.magnification = QDoubleSpinBox()
        self.magnification.setRange(*INPUT_SCALE_RANGE)
        self.magnification.setSingleStep(0.25)
        self.magnification.setDecimals(2)
        self.magnification.setSuffix(" ×")
        self.magnification.setToolTip(
            "The embedded model magnifies each slice before its encoder (2× by default: nuclei get more "
            "detail). 1.0 is better, and 4× faster, for cell bodies and nuclei of radius over ~18 px; on a CPU "
            "it also keeps large slices (over 512 px, encoded in tiles at 2×) quick. Official SAM "
            "models always see a 1024 px canvas: not used for them.")
        self.magnification.setEnabled(False)
        form.addRow("Magnification", self.magnification)
        root.addWidget(setup)

        layers = QGroupBox("Layers")
        form = QFormLayout(layers)
        self.points = _combo("Points layer with the clicks (feature 'positive': green yes, magenta no)")
        self.boxes = _combo("Shapes layer whose rectangles are boxes (each box one object)")
        self.labels = _combo("Labels layer that commits write into")
        form.addRow("Points", self.points)
        form.addRow("Boxes", self.boxes)
        form.addRow("Labels", self.labels)
        root.addWidget(layers)

        prompts = QGroupBox("Prompts on this slice")
        box = QVBoxLayout(prompts)
        self.positive, self.negative, self.polarity, row = _choice(
            parent, "positive", "negative", label="New points:",
            tips=("New points mark the object (N toggles)", "New points mark what is not the object (N toggles)"))
        box.addLayout(row)
        self.refine = QCheckBox("Refine the selected label (its mask on this slice is a prompt)")
        self.refine.setToolTip("Use the labels layer's selected label on this slice, e.g. after a brush fix, as SAM's mask prompt")
        box.addWidget(self.refine)
        box.addWidget(QLabel("Candidates (best first; K / Shift-K or click):"))
        self.candidates = QListWidget()
        self.candidates.setMaximumHeight(92)
        self.candidates.setToolTip(
            "Best first: by SAM's predicted IoU for official checkpoints; for the embedded model, whose IoU head "
            "cannot tell its candidates apart, by predicted IoU x how sharp the image's edge is along each outline "
            "(candidates that contradict a click come last)")
        box.addWidget(self.candidates)
        root.addWidget(prompts)

        commit = QGroupBox("Commit")
        box = QVBoxLayout(commit)
        self.new_id, self.selected_id, self.target, row = _choice(parent, "new object id", "selected label")
        box.addLayout(row)
        self.overwrite = QCheckBox("overwrite existing labels")
        self.overwrite.setToolTip("For commits (C). Off: pixels that already belong to another object are kept. "
                                  "Propagation and prompts on every slice never overwrite them")
        box.addWidget(self.overwrite)
        row = QHBoxLayout()
        self.commit = QPushButton("Commit (C)")
        self.clear = QPushButton("Clear slice (Shift-C)")
        self.undo = QPushButton("Undo")
        self.commit.setToolTip("Write the shown candidate into the labels layer on this slice (Ctrl-Z undoes)")
        self.clear.setToolTip("Remove this slice's points and boxes")
        self.undo.setToolTip("Undo the last commit or propagation (Ctrl-Z with the image, points or boxes layer "
                             "selected; with the labels layer selected Ctrl-Z is napari's own undo)")
        row.addWidget(self.commit)
        row.addWidget(self.clear)
        row.addWidget(self.undo)
        box.addLayout(row)
        self.find = QPushButton("Find all objects on this slice")
        self.find.setToolTip(
            "No clicks: SAM tries seed points all over this slice (bright spots first, then a grid) and commits "
            "every object it is sure of as a new label, only where the labels layer is background (one Ctrl-Z "
            "undoes it). Fix or delete what it got wrong, then Propagate all on this slice")
        box.addWidget(self.find)
        row = QHBoxLayout()
        self.find_score = QDoubleSpinBox()
        self.find_score.setRange(0.05, 0.95)
        self.find_score.setSingleStep(0.05)
        self.find_score.setDecimals(2)
        self.find_score.setValue(0.5)
        self.find_score.setToolTip(
            "Find all objects keeps a mask only when SAM's predicted IoU is at least this: higher keeps fewer, "
            "surer objects (0.6 on the validation stacks: recall 84% instead of 89%, precision 82% instead of "
            "75%)")
        self.find_dark = QCheckBox("dark objects")
        self.find_dark.setToolTip(
            "Find all objects seeds only on the bright parts of a slice (fluorescence); tick for objects darker "
            "than their background or without one (brightfield, EM): seeds everywhere, several times slower")
        row.addWidget(QLabel("Find: keep SAM score ≥"))
        row.addWidget(self.find_score)
        row.addWidget(self.find_dark)
        row.addStretch(1)
        box.addLayout(row)
        root.addWidget(commit)

        propagate = QGroupBox("Propagate through z")
        box = QVBoxLayout(propagate)
        row = QHBoxLayout()
        self.propagate_object = QPushButton("Propagate object")
        self.propagate_object.setToolTip(
            "Follow the selected label through z from the slices where it is (one Ctrl-Z undoes the run)")
        self.propagate_all = QPushButton("Propagate all on this slice")
        self.propagate_all.setToolTip(
            "Follow every label on this slice through z, together (only background pixels are written)")
        row.addWidget(self.propagate_object)
        row.addWidget(self.propagate_all)
        box.addLayout(row)
        self.every_slice = QPushButton("Prompts on every slice")
        self.every_slice.setToolTip(
            "For objects that stay put: this slice's points (one object) and boxes (one object each) on every slice "
            "of the stack, as new labels; slices where an object is not (too faint compared with this slice) stay "
            "empty, and only background pixels are written (one Ctrl-Z undoes the run)")
        box.addWidget(self.every_slice)
        self.find_stack = QPushButton("Find all objects in the stack")
        self.find_stack.setToolTip(
            "No clicks: every object is looked for on this slice and on every Nth slice up and down from it "
            "(each time only where the labels are background), and what is found is carried through z, as new "
            "labels; only background pixels are written (one Ctrl-Z undoes the run)")
        row = QHBoxLayout()
        row.addWidget(self.find_stack, 1)
        self.find_every = QSpinBox()
        self.find_every.setRange(1, 100)
        self.find_every.setValue(4)
        self.find_every.setPrefix("every ")
        self.find_every.setSuffix(" slices")
        self.find_every.setToolTip(
            "How many slices apart Find all objects in the stack looks for objects: about the depth of the "
            "thinnest objects (4 finds nuclei 3-5 slices deep; 2 or 1 for thinner ones, slower)")
        row.addWidget(self.find_every)
        box.addLayout(row)
        row = QHBoxLayout()
        self.z_from, self.z_to = QSpinBox(), QSpinBox()
        self.z_from.setRange(0, 1_000_000)
        self.z_to.setRange(-1, 1_000_000)
        self.z_to.setSpecialValueText("last")  # at -1: the stack's last slice, whatever its length
        self.z_to.setValue(-1)
        for spin, tip in ((self.z_from, "The first slice these buttons may write"),
                          (self.z_to, "The last slice these buttons may write ('last': the stack's end)")):
            spin.setToolTip(tip)
        row.addWidget(QLabel("Slices"))
        row.addWidget(self.z_from)
        row.addWidget(QLabel("to"))
        row.addWidget(self.z_to)
        row.addStretch(1)
        box.addLayout(row)
        self.propagate_memory = QCheckBox("With SAM 2's memory")
        self.propagate_memory.setEnabled(False)
        self.propagate_memory.setToolTip(
            "SAM 2 / 2.1 models: follow objects with SAM 2's memory of the slices already segmented (its video "
            "predictor) instead of prompting each slice from the previous one's mask; objects end where SAM 2 "
            "finds them gone. Each slice is encoded again, twice between prompted slices")
        box.addWidget(self.propagate_memory)
        self.propagate_status = QLabel("")
        self.propagate_status.setWordWrap(True)
        self.propagate_status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.propagate_status.setToolTip("The last propagation: where each object reached and why it stopped")
        box.addWidget(self.propagate_status)
        root.addWidget(propagate)
        root.addWidget(self._precompute_group())

        row = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(12)
        self.cancel = QPushButton("Cancel")
        self.cancel.setToolTip("Stop waiting for the model or the slice's embedding, or stop a propagation")
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel)
        root.addLayout(row)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status.setMinimumHeight(48)
        self.status.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        root.addWidget(self.status)
        root.addStretch(1)
        self.set_busy(None)

    def _precompute_group(self) -> QGroupBox:
        """Embeddings ahead of time: neighbouring slices in memory, or the whole stack on disk."""
        group = QGroupBox("Embeddings ahead of time")
        box = QVBoxLayout(group)
        self.precompute = QCheckBox("Precompute neighbouring slices")
        self.precompute.setChecked(True)
        self.precompute.setToolTip("In the background, embed the slices around the current one (nearest first) "
                                   "into memory, so moving to them costs no encoder time")
        box.addWidget(self.precompute)
        row = QHBoxLayout()
        self.precompute_stack = QPushButton("Precompute whole stack…")
        self.precompute_stack.setToolTip("Embed every slice into a cache folder (.zarr) on disk, then read clicks' "
                                         "slices from it; an existing cache of this image and model is resumed")
        self.precompute_stop = QPushButton("Stop")
        self.precompute_stop.setToolTip("Stop precomputing (a disk cache keeps the slices done: run again to resume)")
        row.addWidget(self.precompute_stack, 1)
        row.addWidget(self.precompute_stop)
        box.addLayout(row)
        self.precompute_bar = QProgressBar()
        self.precompute_bar.setTextVisible(False)
        self.precompute_bar.setMaximumHeight(12)
        box.addWidget(self.precompute_bar)
        self.precompute_status = QLabel("")
        self.precompute_status.setWordWrap(True)
        box.addWidget(self.precompute_status)
        self.precompute_bar.setVisible(False)
        self.precompute_stop.setVisible(False)
        return group

    def set_busy(self, description: str | None) -> None:
        self.progress.setVisible(description is not None)
        self.cancel.setVisible(description is not None)
        if description is not None:
            self.progress.setToolTip(description)

    def fill_layers(self, combo: QComboBox, layers: list, current, *, new_item: bool) -> None:
        """Refill ``combo`` with ``layers`` (item data = the layer), keeping ``current`` selected."""
        combo.blockSignals(True)
        combo.clear()
        if new_item:
            combo.addItem(NEW_LAYER, None)
        for ly in layers:
            combo.addItem(ly.name, ly)
        i = next((k for k in range(combo.count()) if current is not None and combo.itemData(k) == current), 0)
        combo.setCurrentIndex(i)
        combo.blockSignals(False)
