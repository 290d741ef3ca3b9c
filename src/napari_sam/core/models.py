"""Which SAM model to run, where its weights come from, and on which device.

* ``REGISTRY``: model name -> :class:`ModelSpec` (download URL and checksum).
  ``embedded`` ships inside the package; the others are downloaded once with
  pooch into :func:`cache_dir` and verified against their published checksum.
* :func:`load_model` takes a registry name or a checkpoint path and returns a
  :class:`LoadedModel` (the ``Sam`` module plus where it came from).
* :func:`resolve_device` / :func:`choose_dtype` (from ``devices``): ``auto``
  means cuda, then mps, then cpu; half precision only on CUDA.

torch, segment_anything and pooch are imported inside the functions that need
them, so importing this module is cheap.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoints import ModelError, build_sam, file_identity, read_checkpoint, sha256_file
from .devices import choose_dtype, resolve_device
from .download import cache_dir, download, file_hash, remove_stale_parts
from .model_path import checkpoint_file

if TYPE_CHECKING:
    import torch
    from segment_anything.modeling import Sam

__all__ = [
    "REGISTRY", "LoadedModel", "ModelError", "ModelSpec", "cache_dir", "choose_dtype",
    "fetch_checkpoint", "load_model", "resolve_device",
]

_META = "https://dl.fbaipublicfiles.com/segment_anything/"
_MICRO_SAM = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/"


@dataclass(frozen=True)
class ModelSpec:
    """Where a named model's weights come from.

    url: download address (None for the embedded model, which ships with the package)
    known_hash: pooch-style checksum "alg:hexdigest" (None for embedded: see embedded.json)
    arch: "vit_b" / "vit_l" / "vit_h" / "vit_t" (MobileSAM) / "embedded"
    filename: name of the file in the cache folder
    """

    url: str | None
    known_hash: str | None
    arch: str
    description: str
    filename: str = ""


REGISTRY: dict[str, ModelSpec] = {
    "embedded": ModelSpec(
        None, None, "embedded",
        "napari-sam's small CNN-encoder SAM, trained on synthetic nuclei; ships with the package",
        "embedded.pt",
    ),
    "vit_b": ModelSpec(
        _META + "sam_vit_b_01ec64.pth",
        "sha256:ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        "vit_b", "official SAM ViT-B (375 MB)", "sam_vit_b_01ec64.pth",
    ),
    "vit_l": ModelSpec(
        _META + "sam_vit_l_0b3195.pth",
        "sha256:3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        "vit_l", "official SAM ViT-L (1.2 GB)", "sam_vit_l_0b3195.pth",
    ),
    "vit_h": ModelSpec(
        _META + "sam_vit_h_4b8939.pth",
        "sha256:a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        "vit_h", "official SAM ViT-H (2.6 GB)", "sam_vit_h_4b8939.pth",
    ),
    # MobileSAM's own weights (TinyViT encoder distilled from SAM ViT-H), from micro-sam's mirror
    "vit_t": ModelSpec(
        "https://owncloud.gwdg.de/index.php/s/TuDzuwVDHd1ZDnQ/download",
        "xxh128:8eadbc88aeb9d8c7e0b4b60c3db48bd0",
        "vit_t", "MobileSAM (TinyViT encoder distilled from SAM ViT-H, ~40 MB)",
        "mobile_sam.pt",
    ),
    # micro-sam's models as published on BioImage.IO (plain SAM state dicts; upstream file names repeat)
    "vit_b_lm": ModelSpec(
        _MICRO_SAM + "diplomatic-bug/1.2/files/vit_b.pt",
        "xxh128:fe9252a29f3f4ea53c15a06de471e186",
        "vit_b", "micro-sam ViT-B for light microscopy (cells, nuclei)", "micro_sam_vit_b_lm.pt",
    ),
    "vit_l_lm": ModelSpec(
        _MICRO_SAM + "idealistic-rat/1.2/files/vit_l.pt",
        "xxh128:017f20677997d628426dec80a8018f9d",
        "vit_l", "micro-sam ViT-L for light microscopy (cells, nuclei; 1.2 GB)", "micro_sam_vit_l_lm.pt",
    ),
    "vit_t_lm": ModelSpec(
        _MICRO_SAM + "faithful-chicken/1.1/files/vit_t.pt",
        "xxh128:72ec5074774761a6e5c05a08942f981e",
        "vit_t", "micro-sam MobileSAM (TinyViT) for light microscopy: fast on a CPU", "micro_sam_vit_t_lm.pt",
    ),
    "vit_b_em_organelles": ModelSpec(
        _MICRO_SAM + "noisy-ox/1.2/files/vit_b.pt",
        "xxh128:f3bf2ed83d691456bae2c3f9a05fb438",
        "vit_b", "micro-sam ViT-B for electron microscopy organelles", "micro_sam_vit_b_em_organelles.pt",
    ),
    "vit_t_em_organelles": ModelSpec(
        _MICRO_SAM + "greedy-whale/1/files/vit_t.pt",
        "xxh128:253474720c497cce605e57c9b1d18fd9",
        "vit_t", "micro-sam MobileSAM (TinyViT) for electron microscopy organelles",
        "micro_sam_vit_t_em_organelles.pt",
    ),
}


@dataclass
class LoadedModel:
    """A SAM model ready to run, and where it came from.

    sam: ``segment_anything`` ``Sam`` (SAM 2: ``sam2``'s ``SAM2Base``) in eval mode on ``device``, fp32 weights
    name: registry name, or the checkpoint's file name when loaded from a path
    arch: "vit_b" / "vit_l" / "vit_h" / "vit_custom" / "vit_t" (MobileSAM) / "sam2.1_hiera_tiny" etc. / "embedded"
    checksum: SHA-256 hex digest of the checkpoint file
    dtype: compute dtype for autocast (float32 on cpu and mps)
    native_resolution: True when the image encoder runs at the slice's own size
        (the embedded CNN); False for SAM's ViTs (fixed 1024 px canvas)
    int8_encoder: the image encoder in int8 (``core.int8``; the embedded model on an x86 CPU), run by the
        predictor instead of ``sam.image_encoder``; None: the encoder runs as it is
    """

    sam: Sam
    name: str
    arch: str
    checksum: str
    path: Path
    device: torch.device
    dtype: torch.dtype
    native_resolution: bool
    int8_encoder: Any = None

    @property
    def precision(self) -> str:
        """What the image encoder computes in: "int8", "float32", "float16" or "bfloat16"."""
        return "int8" if self.int8_encoder is not None else str(self.dtype).removeprefix("torch.")


def _known() -> str:
    return ", ".join(REGISTRY)


def model_help() -> str:
    """The command line's ``--model`` help: every registry name, or a path."""
    return f"registry name ({_known()}) or checkpoint path"


def _embedded_files() -> tuple[Path, Path]:
    """(weights, metadata) of the embedded model inside the installed package."""
    from importlib.resources import files

    folder = files("napari_sam") / "weights"
    return Path(str(folder / "embedded.pt")), Path(str(folder / "embedded.json"))


def _embedded_checkpoint() -> tuple[Path, str]:
    weights, meta = _embedded_files()
    reinstall = "this napari-sam installation is corrupted: reinstall it (pip install --force-reinstall napari-sam)"
    if not weights.is_file() or not meta.is_file():
        missing = weights if not weights.is_file() else meta
        raise ModelError(f"the embedded model's file {missing} is missing: {reinstall}.")
    try:
        expected = dict(json.loads(meta.read_text()))
    except (ValueError, TypeError):
        raise ModelError(f"the embedded model's metadata {meta} is not valid JSON: {reinstall}.") from None
    size, digest = weights.stat().st_size, None
    if size == expected.get("size"):
        digest = sha256_file(weights)
    if digest != expected.get("sha256"):
        got = digest or f"a file of {size} bytes instead of {expected.get('size')}"
        raise ModelError(
            f"the embedded model's weights {weights} do not match the checksum recorded in {meta.name} "
            f"(expected sha256 {expected.get('sha256')}, got {got}): {reinstall}."
        )
    return weights, digest


def _spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelError(_unknown_name(name, path_hint=False)) from None


def _unknown_name(key: str, path_hint: bool = True) -> str:
    """The message for an unknown name: the nearest registry name, and how SAM 2 and other files load."""
    import difflib

    near = difflib.get_close_matches(key.strip().lower(), list(REGISTRY), n=1, cutoff=0.6)
    msg = f"unknown model {key!r}" + (f" (did you mean {near[0]!r}?)" if near else "") + f": known names are {_known()}"
    if key.strip().lower().startswith("sam2"):
        msg += ("; SAM 2 / 2.1 checkpoints load by path: download e.g. sam2.1_hiera_tiny.pt from "
                "github.com/facebookresearch/sam2 and give its path")
    return msg + ("; or give a path to a .pth/.pt checkpoint" if path_hint else "")


def _registry_name(key: str) -> str | None:
    """The registry name ``key`` means: exact, else (when no file of that name exists) ignoring case and
    surrounding spaces ("VIT_B", " embedded")."""
    if key in REGISTRY:
        return key
    if not Path(key).expanduser().exists() and key.strip().lower() in REGISTRY:
        return key.strip().lower()
    return None


def model_key(name_or_path, device: str = "auto") -> tuple:
    """What identifies a model to load, for caches of loaded models: the registry name, or the file's
    absolute path with its size, modification and change times and inode (a checkpoint saved again at the
    same path is another model, even when its size is the same and its modification time was copied from
    another file, as ``cp -p`` and ``rsync -t`` do; a relative path means another file in another working
    folder), and the device."""
    key = os.fspath("embedded" if name_or_path is None else name_or_path)
    name = _registry_name(key)
    if name is not None:
        return (name, str(device))
    path = Path(key).expanduser().absolute()
    if not path.is_file():
        return (str(path), str(device))
    st = path.stat()
    return (str(path), str(device), *file_identity(st))


def pending_download(name_or_path) -> str | None:
    """The registry name ``load_model(name_or_path)`` would download (its file is not in the cache folder
    yet), else None: lets a caller show a progress bar only when there is something to show."""
    name = _registry_name(os.fspath(name_or_path)) if name_or_path is not None else None
    if name is None or REGISTRY[name].url is None:
        return None
    return None if (cache_dir() / REGISTRY[name].filename).is_file() else name


def fetch_checkpoint(name: str, *, progress: Any = True, url: str | None = None) -> Path:
    """Local path of a registry model's weights, downloading and verifying them if needed.

    ``progress``: True for a tqdm bar on stderr, False for none, or a tqdm-like
    object (e.g. ``napari.utils.progress``). ``url`` overrides the registry's
    address (a mirror, or a local server in tests); the checksum stays the registry's.
    A cached file is re-verified and downloaded again if it does not match
    (``core.download``: never a partial or unverified file, errors that say what to do).
    """
    spec = _spec(name)
    if spec.url is None:
        return _embedded_checkpoint()[0]
    import pooch

    url = url or spec.url
    alg, _, expected = spec.known_hash.partition(":")
    if alg not in pooch.hashes.ALGORITHMS_AVAILABLE:
        raise ModelError(
            f"model {name!r} is verified with a {alg} checksum, which needs the xxhash package: pip install xxhash"
        )
    target = cache_dir() / spec.filename
    if target.is_file() and file_hash(target, alg) == expected:
        remove_stale_parts(target.parent, target.name)
        return target
    return download(name, url, spec.known_hash, target, progress)


def load_model(name_or_path: str | os.PathLike | None = "embedded", *, device: Any = "auto", half: Any = "auto",
               int8: Any = "auto", progress: Any = True) -> LoadedModel:
    """Load a SAM model by registry name (downloaded once, then cached) or from a checkpoint path.

    Names: the keys of :data:`REGISTRY` (embedded, the default; SAM's vit_b/l/h;
    MobileSAM's vit_t; micro-sam's vit_b_lm, vit_l_lm, vit_t_lm, vit_b_em_organelles,
    vit_t_em_organelles). A path may be any SAM-format checkpoint (its ViT size is
    read from the weights' shapes), a MobileSAM-format one (TinyViT encoder), a
    SAM 2 / 2.1 checkpoint (with the ``sam2`` package), or a napari-sam embedded
    checkpoint.

    int8: the embedded model's image encoder in int8 on the CPU (``core.int8``: about twice as fast, masks
    as accurate; made at the first load in a process, ~1 s): "auto" (on x86 CPUs with AVX2 or
    AVX-512), True, or False (fp32, as the weights are). The int8 encoder is made from the weights at load:
    after changing ``model.sam``'s weights in place (fine-tuning), load the model again, or pass int8=False.
    """
    if name_or_path is None:  # as segment(model=None): the default
        name_or_path = "embedded"
    from .int8 import int8_encoder, int8_option, wants_int8

    int8 = int8_option(int8)  # a wrong value is said before a checkpoint is read
    torch_device = resolve_device(device)
    dtype = choose_dtype(torch_device, half)
    key = os.fspath(name_or_path)
    name = _registry_name(key)
    if name is not None:
        wants_int8(int8, REGISTRY[name].arch, torch_device)  # int8=True where it cannot be: refused before a download
        path = fetch_checkpoint(name, progress=progress)
    else:
        path = checkpoint_file(key, REGISTRY, _unknown_name)
        name = path.name
    path = path.resolve()
    checksum = sha256_file(path)
    sam, arch = build_sam(read_checkpoint(path), path)
    quantize = wants_int8(int8, arch, torch_device)
    model = LoadedModel(
        sam=sam.to(torch_device),
        name=name,
        arch=arch,
        checksum=checksum,
        path=path,
        device=torch_device,
        dtype=dtype,
        native_resolution=bool(getattr(sam.image_encoder, "native_resolution", False)),
    )
    if quantize:
        model.int8_encoder = int8_encoder(model)
    return model
