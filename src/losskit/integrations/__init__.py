"""Adapters for other frameworks, each behind an optional extra (``pip install losskit[transformers]``)."""
