"""Pure numpy/torch core of napari-sam: no napari, no Qt."""
