"""Synthesis stages: each a StageUDF (the callable) plus how processor.py maps it (StageSpec)."""
