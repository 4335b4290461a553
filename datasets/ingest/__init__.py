"""Ingest: a manifest of source volumes or a dataset folder (``layouts/``) → readers → C.1 preprocessing → MRGen-DB
shards (``build_db``)."""
