"""What `pip install napari-sam` gets: the wheel and sdist built from this tree, and the npe2 manifest.

The rest of the suite runs on an editable checkout, which hides packaging mistakes (weights or
napari.yaml left out of the wheel, tests or training logs shipped in it). These tests build the
sdist and wheel offline with the hatchling already installed (the `test` extra has it; no build
isolation, no downloads) and look inside them; without hatchling the build tests are skipped.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "napari_sam"
MANIFEST = PKG / "napari.yaml"
WEIGHTS = {"embedded.pt", "embedded.json", "embedded-int8.json"}  # weights, checksum, int8 ranges
# the model's own file is the one large file the wheel may hold
MAX_OTHER_FILE = 1 << 20

pytestmark = pytest.mark.skipif(
    not (ROOT / "pyproject.toml").is_file() or not MANIFEST.exists(),
    reason=f"not run from a source tree of napari-sam ({ROOT})",
)


def _manifest(path: Path):
    from npe2 import PluginManifest

    return PluginManifest.from_file(path)


def _check_manifest(m) -> None:
    """The contributions README.md and docs/widget.md name, each pointing at a module that exists."""
    assert m.name == "napari-sam"
    c = m.contributions
    assert [w.display_name for w in c.widgets] == ["SAM segmentation"]
    assert [s.key for s in c.sample_data] == ["nuclei"]
    assert [set(w.filename_extensions) for w in c.writers] == [{".tif", ".tiff"}]
    assert {cmd.id for cmd in c.commands} >= {w.command for w in (*c.widgets, *c.sample_data, *c.writers)}


def _module_files(m) -> set[str]:
    """'napari_sam/_qt/widget.py' and the like, for every python_name of the manifest."""
    return {cmd.python_name.split(":")[0].replace(".", "/") + ".py" for cmd in m.contributions.commands if cmd.python_name}


def test_manifest_is_a_file_npe2_validates():
    # a real file, not a symlink: git on Windows checks symlinks out as text files holding the target
    # path, and the wheel built there would ship that instead of the manifest
    assert not MANIFEST.is_symlink(), f"{MANIFEST} is a symlink"
    r = subprocess.run([sys.executable, "-m", "npe2", "validate", str(MANIFEST)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    m = _manifest(MANIFEST)
    _check_manifest(m)
    for module in _module_files(m):
        assert (PKG.parent / module).is_file(), f"napari.yaml names {module}, not in {PKG}"


def test_installed_distribution_points_napari_at_the_manifest():
    eps = [ep for ep in importlib.metadata.entry_points(group="napari.manifest") if ep.name == "napari-sam"]
    assert [ep.value for ep in eps] == ["napari_sam:napari.yaml"]
    from importlib.resources import files

    resource = files("napari_sam") / "napari.yaml"
    assert resource.is_file()
    assert "name: napari-sam" in resource.read_text()


def _build(source: Path, out: Path, *kinds: str) -> list[Path]:
    """Build with hatchling's PEP 517 hooks in `source`, offline; the paths of what was built."""
    if importlib.util.find_spec("hatchling") is None:
        pytest.skip("hatchling is not installed in this environment (it is in the `test` extra): "
                    "the wheel and sdist cannot be built offline without it")
    code = "import sys, hatchling.build as b\nfor kind in sys.argv[2:]:\n    print(getattr(b, 'build_' + kind)(sys.argv[1]))"
    r = subprocess.run([sys.executable, "-c", code, str(out), *kinds], cwd=source, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return [out / name for name in r.stdout.split()]


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    sdist, wheel = _build(ROOT, out, "sdist", "wheel")
    return sdist, wheel


def _check_wheel(wheel: Path, tmp: Path) -> list[str]:
    """Assertions every napari-sam wheel must pass; returns its file names."""
    with zipfile.ZipFile(wheel) as z:
        infos = z.infolist()
        names = [i.filename for i in infos]
        # the package, its manifest and the weights, checked as the loader checks them
        weights = {n.rsplit("/", 1)[1] for n in names if n.startswith("napari_sam/weights/")}
        assert weights == WEIGHTS, f"napari_sam/weights/ in the wheel holds {sorted(weights)}"
        meta = json.loads(z.read("napari_sam/weights/embedded.json"))
        pt = z.read("napari_sam/weights/embedded.pt")
        assert (len(pt), hashlib.sha256(pt).hexdigest()) == (meta["size"], meta["sha256"]), (
            "the wheel's embedded.pt does not match embedded.json (a Git LFS pointer or stale weights?)")
        (tmp / "napari.yaml").write_bytes(z.read("napari_sam/napari.yaml"))
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
        metadata = z.read(f"{dist_info}/METADATA").decode()
    m = _manifest(tmp / "napari.yaml")
    _check_manifest(m)
    missing = _module_files(m) - set(names)
    assert not missing, f"napari.yaml names modules the wheel lacks: {sorted(missing)}"
    assert "[napari.manifest]\nnapari-sam = napari_sam:napari.yaml" in entry_points
    assert "napari-sam = napari_sam.cli:main" in entry_points
    assert "Provides-Extra: qt" in metadata
    # nothing but the package and its metadata: no tests, docs, training logs, caches or leftovers
    stray = [n for n in names if not (n.startswith("napari_sam/") or n.startswith(dist_info + "/"))]
    assert not stray, f"outside the package: {stray}"
    bad_suffix = (".pyc", ".jsonl", ".png", ".partial", ".tmp", ".zarr", ".tif", ".npy")
    junk = [n for n in names if "__pycache__" in n or n.endswith(bad_suffix)]
    assert not junk, f"should not ship: {junk}"
    big = [(i.filename, i.file_size) for i in infos
           if i.file_size > MAX_OTHER_FILE and i.filename != "napari_sam/weights/embedded.pt"]
    assert not big, f"large files: {big}"
    return names


def test_wheel_holds_every_module_the_manifest_and_the_weights(dists, tmp_path):
    names = set(_check_wheel(dists[1], tmp_path))
    # every module of the source tree (core/, _qt/ included) and nothing from tests/ or docs/
    sources = {p.relative_to(PKG.parent).as_posix() for p in PKG.rglob("*.py") if "__pycache__" not in p.parts}
    assert {"napari_sam/core/__init__.py", "napari_sam/_qt/widget.py"} <= sources
    assert sources - names == set(), f"not in the wheel: {sorted(sources - names)}"


def test_sdist_builds_a_wheel_with_the_weights(dists, tmp_path):
    sdist = dists[0]
    with tarfile.open(sdist) as t:
        members = {m.name.split("/", 1)[1]: m for m in t.getmembers() if "/" in m.name}
        for name in ("pyproject.toml", "README.md", "src/napari_sam/napari.yaml",
                     *(f"src/napari_sam/weights/{w}" for w in WEIGHTS)):
            assert name in members, f"{name} not in the sdist"
            assert members[name].isfile(), f"{name} is not a regular file in the sdist (a symlink?)"
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        t.extractall(tmp_path / "src", **kwargs)
    unpacked = next((tmp_path / "src").iterdir())
    (tmp_path / "out").mkdir()
    (wheel,) = _build(unpacked, tmp_path / "out", "wheel")
    names = _check_wheel(wheel, tmp_path)
    with zipfile.ZipFile(dists[1]) as z:
        assert sorted(names) == sorted(z.namelist()), "the wheel built from the sdist differs from the one built from the tree"
