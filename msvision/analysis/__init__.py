"""Cost analysis of model configs (``python -m msvision.analysis --config=...``)."""
