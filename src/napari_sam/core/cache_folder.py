"""What is at the path given for an embedding cache, and whether it may be replaced.

An embedding cache (``core.disk_cache``) is started in an empty or missing
folder, resumed where one exists, and started again over one whose creation
was cut short. Anything else there (an image's zarr store, a folder of data)
is never replaced, even when asked to overwrite: the path was a slip.
"""

from __future__ import annotations

from pathlib import Path

ATTR = "napari_sam_embeddings"  # the record an embedding cache's group carries (core.disk_cache)

NOT_OURS = {
    "zarr": "{p} is a zarr store but not a napari-sam embedding cache (an image?): refusing to replace it; "
            "choose another name for the cache",
    "other": "{p} exists and is not a zarr store: refusing to replace it; choose another name for the cache",
}


def store_kind(path) -> str:
    """What is at ``path``: "none" (nothing, or an empty folder), "cache" (an embedding cache),
    "unfinished" (a cache whose creation was cut short: only its arrays, no record), "zarr" (another
    zarr store: never replaced) or "other" (a file, a folder of other things: never replaced)."""
    p = Path(path)
    if not p.exists() or (p.is_dir() and not any(p.iterdir())):
        return "none"
    if not p.is_dir() or not ((p / "zarr.json").exists() or (p / ".zgroup").exists() or (p / ".zarray").exists()):
        return "other"
    import zarr

    try:
        g = zarr.open_group(str(p), mode="r")
        if ATTR in g.attrs:
            return "cache"
        names = list(g.keys())
    except Exception:
        return "zarr"
    ours = all(n in ("features", "gray", "signature") or n.startswith("high_res_") for n in names)
    return "unfinished" if ours else "zarr"
