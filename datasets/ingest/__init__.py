"""Ingest: manifest of source volumes → readers → C.1 preprocessing → MRGen-DB shards (``build_db``)."""
