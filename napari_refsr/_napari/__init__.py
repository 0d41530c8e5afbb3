"""napari front end (widget, sample data, TIFF writer); imported only by napari through napari.yaml,
so the core never imports napari or Qt."""
