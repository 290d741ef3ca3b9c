"""napari dock widget of napari-sam: ``widget.SamWidget`` and the helpers it is built from."""
