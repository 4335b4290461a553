"""Names derived from the inputs, so reruns and retries land on the same keys and seeds."""
from __future__ import annotations

import hashlib
import re


def mask_key(source_slice_id: str, modality: str) -> str:
    """One unit of work: a source mask used for one target modality."""
    return hashlib.sha1(f"{source_slice_id}\n{modality}".encode()).hexdigest()[:16]


def candidate_seed(run_seed: int, source_slice_id: str, modality: str, index: int) -> int:
    """seed = hash(run seed, mask id, modality, candidate index): a rerun reproduces every candidate."""
    digest = hashlib.sha256(f"{run_seed}\n{source_slice_id}\n{modality}\n{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**31 - 1)


def group_key(mask_keys: list[str]) -> str:
    """Key of an output shard / audit part holding these masks."""
    return hashlib.sha1("\n".join(sorted(mask_keys)).encode()).hexdigest()[:16]


def modality_slug(modality: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", modality.lower()).strip("-") or "modality"
