"""The composition root: build the components from the settings, start, reload and drain them."""
