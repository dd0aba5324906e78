"""hw2.images: pictures of any format, mode and size brought to CIFAR's 32x32 in one way (the largest central
square, the BOX filter), and a clear error naming each file that cannot be used."""
import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hw2.data import data_label, load_test_data
from hw2.errors import ImageError
from hw2.images import MAX_PIXELS, image_files, read_file, read_image, read_images

SAMPLE = Path(__file__).resolve().parent.parent / "notebooks" / "sample.png"
# notebooks/sample.png is CIFAR-10 test image 11 (a ship) of the JPEG stand-in, enlarged 4x by repeating pixels:
#   Image.fromarray(x_test[11].reshape(3, 32, 32).transpose(1, 2, 0)).resize((128, 128), Image.Resampling.NEAREST)
#        .save("notebooks/sample.png", optimize=True)
SAMPLE_INDEX, SAMPLE_CLASS = 11, 8


def cifar(pixels):
    """An HxWx3 uint8 picture of 32x32 in CIFAR's layout: [3072], R, G, B planes."""
    return np.asarray(pixels, np.uint8).transpose(2, 0, 1).reshape(3072)


def solid(rgb):
    """CIFAR's layout of a 32x32 picture of one colour."""
    return cifar(np.broadcast_to(np.array(rgb, np.uint8), (32, 32, 3)))


def noise(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3)).astype(np.uint8)


def test_a_32x32_picture_is_left_exactly_as_it_is(tmp_path):
    pixels = noise(32, 32)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    for picture in (tmp_path / "a.png", str(tmp_path / "a.png"), Image.fromarray(pixels), pixels):
        assert np.array_equal(read_image(picture), cifar(pixels))


@pytest.mark.parametrize("wide", [True, False])
def test_the_largest_central_square_is_taken_not_squashed_or_padded(wide):
    """96x64: 16 red columns, a 64x64 green square, 16 blue columns; squashing or padding would bring in red,
    blue or a border."""
    pixels = np.zeros((64, 96, 3), np.uint8)
    pixels[:, :16] = (255, 0, 0)
    pixels[:, 16:80] = (0, 200, 0)
    pixels[:, 80:] = (0, 0, 255)
    if not wide:
        pixels = pixels.transpose(1, 0, 2).copy()
    assert np.array_equal(read_image(pixels), solid((0, 200, 0)))


def test_the_box_filter_averages_and_undoes_an_enlargement_by_repeated_pixels():
    pixels = noise(32, 32)
    for factor in (2, 5):
        enlarged = pixels.repeat(factor, axis=0).repeat(factor, axis=1)
        assert np.array_equal(read_image(enlarged), cifar(pixels))
    checkerboard = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)  # nearest neighbour: all 0 or 255
    assert set(np.unique(read_image(checkerboard))) <= {127, 128}, "antialiased: each 2x2 block averaged"
    small = noise(16, 16)
    assert np.array_equal(read_image(small), cifar(small.repeat(2, axis=0).repeat(2, axis=1))), "enlarged"


def saved(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def with_transparency():
    """A 32x32 palette picture: index 0 (red) transparent left half, index 1 (green) right half."""
    image = Image.new("P", (32, 32), 1)
    image.putpalette([255, 0, 0, 0, 200, 0] + [0] * 762)
    image.paste(0, (0, 0, 16, 32))
    image.info["transparency"] = 0
    return image


def halves(left, right):
    pixels = np.empty((32, 32, 3), np.uint8)
    pixels[:, :16], pixels[:, 16:] = left, right
    return cifar(pixels)


def two_frames():
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((0, 0, 255), (255, 0, 0))]
    return saved(frames[0], "GIF", save_all=True, append_images=frames[1:])


@pytest.mark.parametrize("name, data, expected, tolerance", [
    ("grey.png", saved(Image.new("L", (32, 32), 100), "PNG"), solid((100, 100, 100)), 0),
    ("grey16.png", saved(Image.fromarray(np.full((32, 32), 25700, np.uint16)), "PNG"), solid((100,) * 3), 0),
    ("white16.png", saved(Image.fromarray(np.full((32, 32), 65535, np.uint16)), "PNG"), solid((255,) * 3), 0),
    ("rgba.png", saved(Image.new("RGBA", (32, 32), (0, 0, 0, 128)), "PNG"), solid((127,) * 3), 1),
    ("clear.png", saved(Image.new("RGBA", (32, 32), (255, 0, 0, 0)), "PNG"), solid((255, 255, 255)), 0),
    ("la.png", saved(Image.new("LA", (32, 32), (0, 255)), "PNG"), solid((0, 0, 0)), 0),
    ("palette.png", saved(with_transparency(), "PNG"), halves((255, 255, 255), (0, 200, 0)), 0),
    ("palette.gif", saved(with_transparency(), "GIF"), halves((255, 255, 255), (0, 200, 0)), 0),
    ("frames.gif", two_frames(), solid((0, 0, 255)), 0),
    ("photo.jpg", saved(Image.new("RGB", (32, 32), (200, 60, 30)), "JPEG", quality=95), solid((200, 60, 30)), 3),
    ("cmyk.jpg", saved(Image.new("CMYK", (32, 32), (0, 255, 0, 0)), "JPEG", quality=95), solid((255, 0, 255)), 3),
    ("lossless.webp", saved(Image.fromarray(noise(32, 32)), "WEBP", lossless=True), cifar(noise(32, 32)), 0),
    ("bitmap.bmp", saved(Image.fromarray(noise(32, 32)), "BMP"), cifar(noise(32, 32)), 0),
    ("big.tiff", saved(Image.fromarray(noise(32, 32)).resize((320, 320), Image.Resampling.NEAREST), "TIFF"),
     cifar(noise(32, 32)), 0),
])
def test_every_format_and_mode_becomes_rgb_with_transparency_over_white(tmp_path, name, data, expected, tolerance):
    (tmp_path / name).write_bytes(data)
    x = read_image(tmp_path / name)
    assert x.dtype == np.uint8 and x.shape == (3072,)
    assert np.abs(x.astype(int) - expected).max() <= tolerance


def test_the_exif_orientation_of_a_photo_is_applied(tmp_path):
    upright = noise(32, 32)
    upright[:4] = 255  # a white band at the top
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display", as a phone held upright writes it
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.png", exif=exif)
    assert np.array_equal(read_image(tmp_path / "phone.png"), cifar(upright))
    assert np.array_equal(read_image(Image.open(tmp_path / "phone.png")), cifar(upright))


def test_arrays_are_grey_rgb_or_rgba_in_8_or_16_bits():
    grey16 = np.array([[0, 128, 129, 65535]], np.uint16).repeat(4, axis=0).repeat(8, axis=1).repeat(8, axis=0)
    assert read_image(grey16).reshape(3, 32, 32)[0, 0, ::8].tolist() == [0, 0, 1, 255]  # x / 257, rounded
    rgba = np.zeros((32, 32, 4), np.uint8)
    assert np.array_equal(read_image(rgba), solid((255, 255, 255)))
    assert np.array_equal(read_image((noise(32, 32).astype(np.uint16) * 257)), cifar(noise(32, 32)))
    for bad in (np.zeros((32, 32), np.float32), np.zeros((32, 32, 2), np.uint8), np.zeros(3072, np.uint8)):
        with pytest.raises(ImageError, match=rf"an array of {bad.dtype} \({', '.join(map(str, bad.shape))},?\) is "
                                             r"not a picture: give HxW \(grey\), HxWx3 \(RGB\) or HxWx4"):
            read_image(bad)
    with pytest.raises(TypeError, match="not a list"):
        read_image([1, 2])


def test_read_images_stacks_pictures_in_the_cifar_layout(tmp_path):
    Image.fromarray(noise(32, 32, seed=1)).save(tmp_path / "a.png")
    x = read_images([tmp_path / "a.png", noise(64, 64, seed=2), Image.new("L", (40, 40), 7)])
    assert x.shape == (3, 3072) and x.dtype == np.uint8
    assert np.array_equal(x[0], cifar(noise(32, 32, seed=1))) and np.array_equal(x[2], solid((7, 7, 7)))
    assert read_images([]).shape == (0, 3072)


def header_only_png(path, width, height):
    """A PNG that claims width x height 8-bit grey pixels but holds the compressed bytes of a few hundred."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(300)))
                     + chunk(b"IEND", b""))
    return path


def test_a_picture_over_the_pixel_limit_is_refused_before_it_is_decoded(tmp_path):
    assert MAX_PIXELS == 40_000_000
    for width, height in ((8000, 6000), (10000, 10000)):  # the second is over Pillow's own warning, 89 million
        path = header_only_png(tmp_path / f"bomb{width}.png", width, height)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # and no Pillow warning about it
            with pytest.raises(ImageError, match=rf"bomb{width}.png is {width}x{height}, {width * height:,} pixels: "
                                                 r"more than the 40,000,000 pixels hw2.images decodes \(a guard "
                                                 r"against decompression bombs\); scale it down first$"):
                read_file(path)  # decoding it would fail on its short data instead
    path = header_only_png(tmp_path / "huge.png", 100_000, 100_000)
    with pytest.raises(ImageError, match=r"huge.png is too large for Pillow to open \(.*\): more than the "
                                         r"40,000,000 pixels hw2.images decodes .*; scale it down first$"):
        read_file(path)


def truncated(fmt):
    data = saved(Image.fromarray(noise(64, 64)), fmt)
    return data[:len(data) // 2]


@pytest.mark.parametrize("name, data, message", [
    ("empty.png", b"", r"is empty \(0 bytes\): save or copy the picture again"),
    ("notes.png", b"not a picture\n", r"is not a picture Pillow can read \(PNG, JPEG, WebP, GIF, BMP, TIFF, \.\.\.\): "
                                      "convert it to PNG or JPEG"),
    ("cut.png", truncated("PNG"), r"is truncated or damaged \(.+\): save or download it again"),
    ("cut.jpg", truncated("JPEG"), r"is truncated or damaged \(OSError: image file is truncated.*\): save or "),
])
def test_a_file_that_is_not_a_usable_picture_is_one_line_naming_it(tmp_path, name, data, message):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ImageError, match=message) as e:
        read_image(tmp_path / name)
    assert str(e.value).startswith(f"{tmp_path / name} ") and "\n" not in str(e.value)


def test_a_missing_file_or_a_folder_is_named(tmp_path):
    with pytest.raises(ImageError, match=f"^{tmp_path / 'gone.png'} does not exist$"):
        read_image(tmp_path / "gone.png")
    with pytest.raises(ImageError, match=f"^{tmp_path} cannot be read"):
        read_file(tmp_path)


def test_a_folder_means_the_picture_files_directly_in_it_sorted(tmp_path):
    for name in ("b.JPG", "a.png", "c.webp", "notes.txt", ".hidden.png", "sub/d.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()
    assert image_files(tmp_path) == [tmp_path / "a.png", tmp_path / "b.JPG", tmp_path / "c.webp"]
    assert image_files(tmp_path / "notes.txt") == [tmp_path / "notes.txt"], "a file given is tried whatever its name"
    assert image_files(tmp_path / "gone.png") == [tmp_path / "gone.png"]
    with pytest.raises(ImageError, match=rf"^{tmp_path / 'sub' / 'e'} is a folder with no picture files in it "
                                         r"\(\.png, \.jpg, .*\); give the pictures' files or their folder$"):
        (tmp_path / "sub" / "e").mkdir()
        image_files(tmp_path / "sub" / "e")


def test_the_notebooks_sample_is_a_cifar10_test_image_enlarged(real_data_dir):
    assert SAMPLE.stat().st_size < 30_000
    with Image.open(SAMPLE) as image:
        assert image.size == (128, 128) and image.mode == "RGB"
    x_test, y_test = load_test_data(real_data_dir)
    assert y_test[SAMPLE_INDEX] == SAMPLE_CLASS
    difference = np.abs(read_image(SAMPLE).astype(int) - x_test[SAMPLE_INDEX])
    if data_label(real_data_dir) == "CIFAR-10 (JPEG stand-in)":
        assert difference.max() == 0, "made from the stand-in: the BOX filter brings back its pixels exactly"
    else:  # the official image, which the stand-in re-encoded as JPEG
        assert difference.mean() < 8
