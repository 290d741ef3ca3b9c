"""The embedded model's image encoder in int8, on x86 CPUs.

Most microscopes' PCs have no GPU, and the encoder is what a user waits for: on a 2-core CPU, 80% of it is
the CNN's 3x3 convolutions, already at the cores' fp32 peak. Their int8 kernels (PyTorch's x86 engine,
fbgemm and oneDNN, VNNI where the CPU has it) run them about twice as fast: static post-training
quantization (PyTorch's FX graph mode) of the convolutions, batch norms folded, per-channel weights; the
global attention block and SAM's neck stay fp32, and the prompt encoder and mask decoder are untouched.

Activation ranges were calibrated on generated slices of training seeds (never a held-out one) and ship
beside the weights (``weights/embedded-int8.json``, written by ``python -m napari_sam.core.int8``): the int8
encoder is the same in every process, and a slice's embedding never depends on what was encoded before.
Other weights, or a torch that traces another graph, are calibrated the same way at load (~2 s); the
encoder is made once per process and checkpoint.

Only for the embedded model on the CPU (official ViTs, MobileSAM and SAM 2 run as they are; a GPU runs the
fp32 weights, in half precision on CUDA), and, with ``int8="auto"``, only on x86 CPUs with AVX2 or AVX-512,
where it was measured. Accuracy and speed: docs/embedded-model.md and docs/performance.md.
"""

from __future__ import annotations

import copy
import json
import threading
import warnings

__all__ = ["int8_option", "int8_reason", "int8_encoder", "wants_int8"]

CALIBRATION_SEEDS = (100000, 100001, 100002, 100003)  # training seeds (train.py: 100000-100899)
CALIBRATION_SHAPE = (8, 256, 256)
FP32_MODULES = ("attn", "neck")  # attention and SAM's neck: few FLOPs, most sensitive
TABLE = "embedded-int8.json"  # the calibrated activation ranges, shipped beside the weights (main() writes it)

_LOCK = threading.Lock()
_MADE: dict[str, object] = {}  # checkpoint sha256 -> int8 encoder


def int8_reason(model_arch: str, device) -> str | None:
    """Why the encoder of a model of ``model_arch`` on ``device`` cannot run in int8; None when it can."""
    import torch

    if model_arch != "embedded":
        return f"int8 is for the embedded model; {model_arch} runs as it is"
    if torch.device(device).type != "cpu":
        return f"int8 is for the CPU; on {torch.device(device).type} the encoder runs its fp32 weights"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "torch.ao.quantization is deprecated": the int8 kernels are not
            from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx  # noqa: F401
    except ImportError as e:  # torch.ao.quantization is deprecated: a future torch may not have it
        return f"this torch ({torch.__version__}) has no FX quantization ({e})"
    if "x86" not in torch.backends.quantized.supported_engines:
        return f"this torch build has no x86 int8 engine (engines: {torch.backends.quantized.supported_engines})"
    return None


def int8_option(int8):
    """``load_model``'s ``int8`` as "auto", True or False (``devices.auto_flag``: 0 / 1 and numpy's booleans
    too; ``int8=0`` used to run as "auto")."""
    from .devices import auto_flag

    return auto_flag(int8, "int8")


def wants_int8(int8, model_arch: str, device) -> bool:
    """``load_model``'s ``int8`` option: "auto" (the embedded model on an x86 CPU with AVX2 or AVX-512),
    True (refused with the reason where it cannot run) or False."""
    import torch

    from .checkpoints import ModelError

    int8 = int8_option(int8)
    if int8 is False:
        return False
    why = int8_reason(model_arch, device)
    if int8 is True:
        if why:
            raise ModelError(f"int8 was requested, but {why}: leave int8 at 'auto', or turn it off")
        return True
    return why is None and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def int8_encoder(model):
    """The int8 version of ``model``'s (a ``LoadedModel`` of the embedded model, on the CPU) image encoder:
    a module taking the same normalised, padded (B, 3, H, W) input and giving fp32 features."""
    with _LOCK:
        if model.checksum not in _MADE:
            _MADE[model.checksum] = _quantize(model)
        return _MADE[model.checksum]


def _quantize(model):
    """Prepared for int8 (observers after every quantized activation), given the activation ranges of the
    shipped table when it was made for these weights by this graph, else calibrated here; converted."""
    import torch
    from torch.ao.quantization.observer import FixedQParamsObserver
    from torch.ao.quantization.quantize_fx import convert_fx

    prepared = _prepared(model)
    table = _shipped_table(model.checksum)
    if table is None or {k: v[2] for k, v in table.items()} != _observed(prepared):
        _calibrate(prepared, model)  # another torch traces another graph, or other weights: calibrate them
        table = None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # FX quantization: torch.ao.quantization is deprecated, reduce_range
        observers = _observers(prepared)
        for name, (scale, zero_point, _) in (table or {}).items():
            o = observers[name]
            setattr(prepared, name, FixedQParamsObserver(scale, zero_point, o.dtype, o.qscheme, o.quant_min,
                                                         o.quant_max))
        return convert_fx(prepared).eval()


def calibrated_table(model) -> dict:
    """{observer: [scale, zero_point, the graph node it observes]} of the encoder calibrated on the generated
    slices (the shipped table). The node names the observer's place in the graph: a torch that numbers the
    observers otherwise does not get another observer's range."""
    prepared = _prepared(model)
    _calibrate(prepared, model)
    observed = _observed(prepared)
    return {name: [float(s), int(z), observed[name]] for name, o in _observers(prepared).items()
            for s, z in [o.calculate_qparams()]}


def _calibrate(prepared, model) -> None:
    """Run the generated slices through ``prepared``: its observers record their activation ranges."""
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        for x in _calibration_inputs(model):
            prepared(x)


def _prepared(model):
    """The encoder prepared for int8 by FX (observers after every quantized activation)."""
    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    torch.backends.quantized.engine = "x86"
    qconfig = get_default_qconfig_mapping("x86")
    for name in FP32_MODULES:
        qconfig = qconfig.set_module_name(name, None)
    example = torch.zeros(1, 3, 64, 64, device=model.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_fx(copy.deepcopy(model.sam.image_encoder).eval(), qconfig, example_inputs=(example,))


def _observers(prepared) -> dict:
    """{observer: its module}, from the graph: an observer shared by two nodes (interpolate keeps its input's
    range) is listed under both names, as ``named_children`` would not."""
    return {name: getattr(prepared, name) for name in _observed(prepared)}


def _observed(prepared) -> dict:
    """{observer: the name of the graph node whose output it observes}."""
    return {str(n.target): str(n.args[0].name) for n in prepared.graph.nodes
            if n.op == "call_module" and str(n.target).startswith("activation_post_process_")}


def _table_file():
    from importlib.resources import files

    return files("napari_sam") / "weights" / TABLE


def _shipped_table(checksum: str) -> dict | None:
    """The shipped activation ranges, when they were made for the weights of ``checksum``."""
    try:
        meta = json.loads(_table_file().read_text())
    except (OSError, ValueError):
        return None
    if meta.get("weights_sha256") != checksum or not isinstance(meta.get("observers"), dict):
        return None
    try:
        return {str(k): (float(v[0]), int(v[1]), str(v[2])) for k, v in meta["observers"].items()}
    except (TypeError, ValueError, IndexError):  # an older table, or a damaged one: calibrate
        return None


def _calibration_inputs(model) -> list:
    """Generated slices (one per seed, from the middle of its stack; every fourth of cell bodies), as the
    predictor hands them to the encoder: normalised, magnified, padded."""
    from ..synthetic import make_stack
    from .predictor import SlicePredictor

    pred = SlicePredictor(model)
    out = []
    for i, seed in enumerate(CALIBRATION_SEEDS):
        stack = make_stack(CALIBRATION_SHAPE, seed=seed, kind="cells" if i % 4 == 3 else "nuclei").image
        out.append(pred.encoder_input(stack[CALIBRATION_SHAPE[0] // 2]))
    return out


def main(argv=None) -> int:
    """Write the shipped table for the embedded model (after training new weights)."""
    import argparse
    from pathlib import Path

    import torch

    from .models import load_model

    ap = argparse.ArgumentParser(description="calibrate the embedded model's int8 encoder; write its table")
    ap.add_argument("--out", default=str(_table_file()))
    args = ap.parse_args(argv)
    model = load_model("embedded", device="cpu", int8=False)
    table = {"weights_sha256": model.checksum, "torch": torch.__version__, "seeds": list(CALIBRATION_SEEDS),
             "made_by": "python -m napari_sam.core.int8", "observers": calibrated_table(model)}
    Path(args.out).write_text(json.dumps(table, indent=1) + "\n")
    print(f"{args.out}: {len(table['observers'])} activation ranges for weights {model.checksum[:12]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
