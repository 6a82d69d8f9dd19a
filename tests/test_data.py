"""Image folders: every input kind to RGB8, skip-and-count, folder errors, small images,
exactly reproducible training batches, and evaluation padding."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import SAMPLES
from trainables.config import DataConfig
from trainables.data.images import (
    ImageDecodeError,
    ImageSet,
    SkippedImagesWarning,
    TrainCrops,
    check_data_config,
    crop_to,
    fit_to_crop,
    list_images,
    load_eval_images,
    load_rgb8,
    make_train_loader,
    pad_to_multiple,
    resolve_num_workers,
)
from trainables.errors import DataError


def _rgb(height: int = 24, width: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _smooth_rgb(height: int = 32, width: int = 48) -> np.ndarray:
    """A smooth image, so lossy JPEG stays within a few levels."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx * 4, yy * 6, (xx + yy) * 2], axis=2).clip(0, 255).astype(np.uint8)


def _write_png16_rgb(path: Path, values: np.ndarray) -> None:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    height, width, _ = values.shape
    raw = b"".join(b"\x00" + values[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ----------------------------------------------------------------------- listing
def test_list_images_filters_suffixes_case_insensitively_and_sorts(tmp_path: Path):
    for name in ("b.PNG", "a.jpg", "c.JpEg", "d.tif", "e.TIFF", "f.bmp", "g.webp", "notes.txt", "x.gif"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.JpEg", "d.tif", "e.TIFF",
                                                        "f.bmp", "g.webp"]


def test_missing_folder_is_a_data_error_naming_it(tmp_path: Path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"{missing}.*does not exist"):
        list_images(missing)


def test_a_file_instead_of_a_folder_is_a_data_error(tmp_path: Path):
    file = tmp_path / "image.png"
    Image.fromarray(_rgb()).save(file)
    with pytest.raises(DataError, match=f"{file}.*not a directory"):
        list_images(file)


def test_empty_folder_is_a_data_error_naming_it(tmp_path: Path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=f"{tmp_path}.*no image files"):
        list_images(tmp_path)
    with pytest.raises(DataError, match=str(tmp_path)):
        ImageSet(tmp_path)


def test_check_data_config_names_the_key_and_folder(tmp_path: Path):
    check_data_config(DataConfig(train=SAMPLES / "train", eval=SAMPLES / "eval"))  # passes
    with pytest.raises(DataError, match=f"^eval: image folder {tmp_path / 'gone'} does not exist") as info:
        check_data_config(DataConfig(train=SAMPLES / "train", eval=tmp_path / "gone"))
    assert info.value.key == "eval"
    with pytest.raises(DataError, match=f"^train: image folder {tmp_path} holds no image files"):
        check_data_config(DataConfig(train=tmp_path, eval=SAMPLES / "eval"))


# ------------------------------------------------------------------- input kinds
@pytest.mark.parametrize("suffix,options", [(".png", {}), (".tif", {}), (".tiff", {"compression": "tiff_lzw"}),
                                            (".bmp", {}), (".webp", {"lossless": True})])
def test_lossless_rgb_formats_decode_exactly(tmp_path: Path, suffix: str, options: dict):
    pixels = _rgb()
    path = tmp_path / f"image{suffix}"
    Image.fromarray(pixels).save(path, **options)
    decoded = load_rgb8(path)
    assert decoded.dtype == np.uint8 and decoded.shape == (24, 32, 3)
    np.testing.assert_array_equal(decoded, pixels)


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".JPG"])
def test_jpeg_decodes_to_rgb_close_to_the_source(tmp_path: Path, suffix: str):
    pixels = _smooth_rgb()
    path = tmp_path / f"image{suffix}"
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)
    decoded = load_rgb8(path)
    assert decoded.shape == (32, 48, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - pixels.astype(int)).mean() < 2.0


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
def test_grayscale_is_repeated_to_three_channels(tmp_path: Path, suffix: str):
    gray = _smooth_rgb()[:, :, 0]
    path = tmp_path / f"gray{suffix}"
    Image.fromarray(gray, mode="L").save(path)
    decoded = load_rgb8(path)
    assert decoded.shape == (32, 48, 3)
    assert np.array_equal(decoded[:, :, 0], decoded[:, :, 1]) and np.array_equal(decoded[:, :, 1], decoded[:, :, 2])
    tolerance = 2 if suffix == ".jpg" else 0
    assert np.abs(decoded[:, :, 0].astype(int) - gray.astype(int)).max() <= tolerance


def test_one_bit_bilevel_image_becomes_black_and_white(tmp_path: Path):
    bits = np.zeros((8, 8), dtype=bool)
    bits[:, 4:] = True
    path = tmp_path / "bilevel.png"
    Image.fromarray(bits).save(path)
    decoded = load_rgb8(path)
    assert (decoded[:, :4] == 0).all() and (decoded[:, 4:] == 255).all()


@pytest.mark.parametrize("suffix", [".png", ".webp", ".tif"])
def test_rgba_alpha_is_dropped_keeping_the_stored_colours(tmp_path: Path, suffix: str):
    pixels = _rgb()
    alpha = np.zeros((24, 32, 1), dtype=np.uint8)  # fully transparent: compositing would differ
    alpha[:12] = 255
    path = tmp_path / f"rgba{suffix}"
    options = {"lossless": True, "exact": True} if suffix == ".webp" else {}
    Image.fromarray(np.concatenate([pixels, alpha], axis=2), mode="RGBA").save(path, **options)
    np.testing.assert_array_equal(load_rgb8(path), pixels)


def test_gray_with_alpha_drops_alpha(tmp_path: Path):
    gray = _smooth_rgb()[:, :, 1]
    path = tmp_path / "la.png"
    Image.fromarray(np.stack([gray, np.full_like(gray, 7)], axis=2), mode="LA").save(path)
    decoded = load_rgb8(path)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[:, :, channel], gray)


def test_palette_image_maps_to_its_colours(tmp_path: Path):
    palette = [255, 0, 0, 0, 128, 0, 10, 20, 30] + [0] * (256 * 3 - 9)
    indices = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette)
    path = tmp_path / "palette.png"
    image.save(path)
    expected = np.array([[[255, 0, 0], [0, 128, 0], [10, 20, 30]], [[10, 20, 30], [0, 128, 0], [255, 0, 0]]])
    np.testing.assert_array_equal(load_rgb8(path), expected)
    # With a transparent palette entry the colours are still the palette's (alpha dropped).
    image.save(tmp_path / "palette_t.png", transparency=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(load_rgb8(tmp_path / "palette_t.png"), expected)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path: Path, suffix: str):
    values = np.array([[0, 257, 257 * 128, 65535], [5000, 32896, 65280, 300]], dtype=np.uint16)
    path = tmp_path / f"gray16{suffix}"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    decoded = load_rgb8(path)
    expected = np.array([[0, 1, 128, 255], [19, 128, 254, 1]], dtype=np.uint8)  # round(v / 257)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[:, :, channel], expected)


def test_16_bit_rgb_png_keeps_the_full_range(tmp_path: Path):
    values = np.array([[[0, 257 * 10, 65535], [65535, 257 * 200, 256 * 77 + 255]]], dtype=np.uint16)
    path = tmp_path / "rgb16.png"
    _write_png16_rgb(path, values)
    np.testing.assert_array_equal(load_rgb8(path), np.array([[[0, 10, 255], [255, 200, 77]]], dtype=np.uint8))


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_cmyk_is_converted_to_rgb(tmp_path: Path, suffix: str):
    cmyk = np.zeros((16, 16, 4), dtype=np.uint8)
    cmyk[:, 8:, 0] = 255  # full cyan on the right, paper white on the left
    path = tmp_path / f"cmyk{suffix}"
    Image.fromarray(cmyk, mode="CMYK").save(path)
    decoded = load_rgb8(path)
    tolerance = 3 if suffix == ".jpg" else 0
    assert np.abs(decoded[:, :4].astype(int) - 255).max() <= tolerance
    assert np.abs(decoded[:, 12:].astype(int) - np.array([0, 255, 255])).max() <= tolerance


def test_unreadable_file_raises_image_decode_error_naming_it(tmp_path: Path):
    path = tmp_path / "fake.png"
    path.write_text("not an image")
    with pytest.raises(ImageDecodeError, match="fake.png"):
        load_rgb8(path)
    good = tmp_path / "good.png"
    Image.fromarray(_rgb(64, 64)).save(good)
    _truncate(good)
    with pytest.raises(ImageDecodeError, match="good.png"):
        load_rgb8(good)


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("JPEG", ".jpg"), ("TIFF", ".tif"), ("BMP", ".bmp"),
                                        ("WEBP", ".webp")])
def test_truncated_files_of_every_format_are_decode_errors(tmp_path: Path, fmt: str, suffix: str):
    path = tmp_path / f"cut{suffix}"
    Image.fromarray(_rgb(64, 64)).save(path, format=fmt)
    _truncate(path)
    with pytest.raises(ImageDecodeError, match=f"cannot read image {path}"):
        load_rgb8(path)


# --------------------------------------------------------------- skip-and-count
def _folder_with_two_bad_files(folder: Path) -> None:
    for index in range(3):
        Image.fromarray(_rgb(40, 40, seed=index)).save(folder / f"ok{index}.png")
    Image.fromarray(_rgb(64, 64, seed=9)).save(folder / "truncated.png")
    _truncate(folder / "truncated.png")
    (folder / "fake.png").write_text("this is not a PNG")


def test_unreadable_and_truncated_files_are_skipped_with_one_counted_warning(tmp_path: Path):
    _folder_with_two_bad_files(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = ImageSet(tmp_path, cache="always")
    skipped = [w for w in caught if issubclass(w.category, SkippedImagesWarning)]
    assert len(skipped) == 1
    message = str(skipped[0].message)
    assert "skipped 2 unreadable image file(s)" in message and str(tmp_path) in message
    assert "fake.png" in message and "truncated.png" in message and "kept 3" in message
    assert len(images) == 3 and [p.name for p in images.paths] == ["ok0.png", "ok1.png", "ok2.png"]
    assert sorted(p.name for p, _ in images.skipped) == ["fake.png", "truncated.png"]


def test_lazy_set_skips_non_images_up_front_and_truncated_files_when_drawn(tmp_path: Path):
    _folder_with_two_bad_files(tmp_path)
    with pytest.warns(SkippedImagesWarning, match="skipped 1 unreadable.*fake.png"):
        images = ImageSet(tmp_path, cache="never")
    assert not images.cached and len(images) == 4  # the truncated header still parses
    crops = TrainCrops(images, crop=32, small_images="pad", seed=0)
    with pytest.warns(SkippedImagesWarning, match="truncated.png"):
        drawn = [crops[s] for s in range(8)]  # two epochs: the truncated file is drawn
    assert all(c.shape == (3, 32, 32) for c in drawn)
    # The replacement is deterministic: a fresh dataset draws the same crops.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = TrainCrops(ImageSet(tmp_path, cache="never"), crop=32, small_images="pad", seed=0)
        assert all(torch.equal(a, again[s]) for s, a in enumerate(drawn))


def test_folder_with_only_unreadable_files_is_a_data_error(tmp_path: Path):
    (tmp_path / "a.png").write_text("nope")
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(DataError, match=f"{tmp_path} holds no readable image.*2 file"):
        ImageSet(tmp_path)


def test_auto_cache_follows_the_size_limit(tmp_path: Path):
    Image.fromarray(_rgb(10, 10)).save(tmp_path / "a.png")
    assert ImageSet(tmp_path, cache="auto").cached
    assert not ImageSet(tmp_path, cache="auto", cache_limit_bytes=300).cached  # 10·10·3 = 300 bytes
    assert not ImageSet(tmp_path, cache="never").cached


# -------------------------------------------------------------------- small images
def test_pad_reflects_small_images_centred():
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    padded = fit_to_crop(image, 8, "pad")
    assert padded.shape == (8, 8, 3)
    np.testing.assert_array_equal(padded[2:6, 1:7], image)  # centred: 2 rows above, 1 column left
    np.testing.assert_array_equal(padded[1, 1:7], image[1])  # reflection (edge not repeated)
    np.testing.assert_array_equal(padded[0, 1:7], image[2])
    np.testing.assert_array_equal(padded[2:6, 0], image[:, 1])


def test_pad_replicates_where_reflection_is_impossible():
    column = np.arange(5 * 1 * 3, dtype=np.uint8).reshape(5, 1, 3)  # 1 px wide: nothing to mirror
    padded = fit_to_crop(column, 8, "pad")
    assert padded.shape == (8, 8, 3)
    for x in range(8):
        np.testing.assert_array_equal(padded[1:6, x], column[:, 0])
    # 3 px tall padded to 16: pad 7 > 2 would need repeated reflection, so replicate.
    short = np.arange(3 * 16 * 3, dtype=np.uint8).reshape(3, 16, 3)
    padded = fit_to_crop(short, 16, "pad")
    np.testing.assert_array_equal(padded[:6], np.repeat(short[:1], 6, axis=0))
    np.testing.assert_array_equal(padded[6:9], short)


def test_resize_upscales_keeping_aspect():
    image = _smooth_rgb(20, 40)
    resized = fit_to_crop(image, 32, "resize")
    assert resized.shape == (32, 64, 3)
    assert fit_to_crop(image, 16, "resize") is image  # large enough: untouched


@pytest.mark.parametrize("mode", ["pad", "resize"])
def test_training_batches_from_small_images_have_the_crop_size(tmp_path: Path, mode: str):
    Image.fromarray(_rgb(20, 30)).save(tmp_path / "small.png")
    Image.fromarray(_rgb(10, 70, seed=1)).save(tmp_path / "thin.png")
    cfg = DataConfig(train=tmp_path, eval=tmp_path, crop_size=32, batch_size=3, num_workers=0, small_images=mode)
    batch = next(make_train_loader(cfg, seed=0))
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == torch.float32
    assert 0.0 <= float(batch.min()) and float(batch.max()) <= 1.0


# ------------------------------------------------------------------- determinism
def _config(workers: int, cache: str = "auto", batch: int = 4) -> DataConfig:
    return DataConfig(train=SAMPLES / "train", eval=SAMPLES / "eval", crop_size=48, batch_size=batch,
                      num_workers=workers, cache=cache)


def _take(stream, count: int) -> list[torch.Tensor]:
    return [next(stream) for _ in range(count)]


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_stream_equals_the_uninterrupted_one(workers: int):
    reference = _take(make_train_loader(_config(0), seed=7), 12)
    assert all(b.shape == (4, 3, 48, 48) for b in reference)
    for start in (0, 5, 9):
        torch.manual_seed(1234 + start)  # global RNG state must not matter
        resumed = _take(make_train_loader(_config(workers), seed=7, start_iteration=start), 12 - start)
        for offset, batch in enumerate(resumed):
            assert torch.equal(batch, reference[start + offset]), (start, offset)


@pytest.mark.parametrize("workers", [0, 2])
def test_making_and_reading_the_loader_leaves_the_global_rng_alone(workers: int):
    # The engine checkpoints the global RNG (quantization noise); the loader must not draw from it.
    torch.manual_seed(0)
    before = torch.get_rng_state().clone()
    stream = make_train_loader(_config(workers), seed=1, start_iteration=4)
    _take(stream, 2)
    assert torch.equal(torch.get_rng_state(), before)


def test_batches_depend_on_the_seed_not_on_caching():
    cached = _take(make_train_loader(_config(0, cache="always"), seed=3), 3)
    lazy = _take(make_train_loader(_config(0, cache="never"), seed=3), 3)
    other = _take(make_train_loader(_config(0), seed=4), 3)
    assert all(torch.equal(a, b) for a, b in zip(cached, lazy))
    assert not any(torch.equal(a, b) for a, b in zip(cached, other))
    assert not torch.equal(cached[0], cached[1])


def test_each_epoch_visits_every_image_once_in_a_new_order():
    crops = TrainCrops(ImageSet(SAMPLES / "train"), crop=48, small_images="pad", seed=0)
    count = len(crops)
    first, second = crops.image_order(0).tolist(), crops.image_order(1).tolist()
    assert sorted(first) == list(range(count)) == sorted(second)
    assert first != second


def test_automatic_worker_count():
    assert resolve_num_workers(_config(0).model_copy(update={"num_workers": None}), "cpu") == 0
    auto_cuda = resolve_num_workers(_config(0).model_copy(update={"num_workers": None}), "cuda")
    assert 1 <= auto_cuda <= 4
    assert resolve_num_workers(_config(3), "cpu") == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_cuda_batches_are_pinned():
    assert next(make_train_loader(_config(1), seed=0, device_type="cuda")).is_pinned()


# --------------------------------------------------------------------- evaluation
def test_eval_images_are_whole_sorted_and_limited():
    cfg = DataConfig(train=SAMPLES / "train", eval=SAMPLES / "eval", max_eval_images=2)
    images = load_eval_images(cfg)
    assert [name for name, _ in images] == ["kodim21.png", "kodim22.png"]
    name, tensor = images[0]
    assert tensor.shape == (1, 3, 128, 192) and tensor.dtype == torch.float32
    expected = torch.from_numpy(load_rgb8(SAMPLES / "eval" / name)).permute(2, 0, 1).float() / 255
    assert torch.equal(tensor[0], expected)
    assert len(load_eval_images(cfg.model_copy(update={"max_eval_images": None}))) == 4


def test_eval_loader_skips_unreadable_files_with_one_warning(tmp_path: Path):
    _folder_with_two_bad_files(tmp_path)
    cfg = DataConfig(train=tmp_path, eval=tmp_path)
    with pytest.warns(SkippedImagesWarning, match="skipped 2 unreadable"):
        images = load_eval_images(cfg)
    assert [name for name, _ in images] == ["ok0.png", "ok1.png", "ok2.png"]


def test_pad_to_multiple_and_crop_round_trip():
    x = torch.rand(1, 3, 50, 70)
    padded, size = pad_to_multiple(x, 64)
    assert padded.shape == (1, 3, 64, 128) and size == (50, 70)
    assert torch.equal(crop_to(padded, size), x)
    # Replicate padding: the bottom rows repeat the last row, the right columns the last column.
    assert torch.equal(padded[:, :, 63, :70], x[:, :, 49, :])
    assert torch.equal(padded[:, :, :50, 127], x[:, :, :, 69])
    already, size = pad_to_multiple(torch.rand(2, 3, 64, 128), 64)
    assert already.shape == (2, 3, 64, 128) and size == (64, 128)
    tiny, size = pad_to_multiple(torch.rand(1, 3, 5, 3), 64)  # pad much larger than the image
    assert tiny.shape == (1, 3, 64, 64) and crop_to(tiny, size).shape == (1, 3, 5, 3)
