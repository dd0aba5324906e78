"""Pictures a user gives -> what the network sees: uint8 [N, 3072], R, G, B planes of 32x32, as the CIFAR
batches store their images.

A picture is a file (any format and mode Pillow reads: PNG, JPEG, WebP, GIF, BMP, TIFF, ...), a PIL image or a
numpy array, and is brought to CIFAR's form in one way (to_cifar):

1. Upright: a photo's EXIF orientation is applied (phones store pictures sideways with a tag saying so).
   Of an animation (GIF, WebP) the first frame is taken.
2. RGB: grey is repeated in the three channels; 16-bit pixels are scaled to 8 bits (x / 257, rounded);
   palette and CMYK pictures are converted; transparent ones are composited over white.
3. 32x32: the largest central square, then Pillow's BOX filter down to 32x32. CIFAR's training images are
   whole objects that fill a square frame, so squashing a picture to a square would distort its object and
   padding it would shrink the object. BOX averages each output pixel over exactly the input pixels it
   covers: antialiased (no aliasing from skipped pixels), with no ringing or values beyond the input's
   range (as Lanczos has), and a picture enlarged from 32x32 by repeating pixels comes back exactly. A
   32x32 picture is left as it is; a smaller one is enlarged with the same filter, which repeats pixels.

A file that cannot be used (missing, empty, not an image, truncated, or over MAX_PIXELS) is an ImageError
that names it and says what is wrong.
"""
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hw2.errors import ImageError

SIZE = 32
# Decoding stops short of pictures larger than this (a 40-megapixel photo is larger than phones take, and
# decodes to 160 MB as RGBA): a few kilobytes of PNG can claim billions of pixels (a decompression bomb).
MAX_PIXELS = 40_000_000
TOO_LARGE = (f"more than the {MAX_PIXELS:,} pixels hw2.images decodes (a guard against decompression bombs); "
             "scale it down first")


def image_files(path):
    """The pictures a command-line argument means: a file itself, or the files directly in a folder whose
    extension is one this Pillow opens (.png, .jpg, .webp, .gif, ...), sorted by name; other files, hidden
    ones (.name) and subfolders are left out. A folder with none is an ImageError."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    suffixes = {suffix for suffix, format in Image.registered_extensions().items() if format in Image.OPEN}
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes)
    if not files:
        raise ImageError(f"{path} is a folder with no picture files in it (.png, .jpg, .webp, .gif, ...: the formats "
                         "Pillow opens); give the pictures' files or their folder")
    return files


def read_file(path):
    """The picture in the file at path -> uint8 [3072] (to_cifar); an ImageError that names the file and says
    what is wrong otherwise. Its size is checked before it is decoded (MAX_PIXELS)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # Pillow warns at 89 million pixels: check_pixels refuses before that
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except FileNotFoundError:
        raise ImageError(f"{path} does not exist") from None
    except UnidentifiedImageError:
        if path.stat().st_size == 0:
            raise ImageError(f"{path} is empty (0 bytes): save or copy the picture again") from None
        raise ImageError(f"{path} is not a picture Pillow can read (PNG, JPEG, WebP, GIF, BMP, TIFF, ...): "
                         "convert it to PNG or JPEG") from None
    except Image.DecompressionBombError as e:  # Pillow's own limit, twice its warning's
        raise ImageError(f"{path} is too large for Pillow to open ({e}): {TOO_LARGE}") from None
    except OSError as e:
        raise ImageError(f"{path} cannot be read ({e.strerror or e})") from None
    with image:
        check_pixels(image, path)
        try:
            image.load()
        except Exception as e:  # only the decoder runs here: whatever it raises, the file is damaged
            raise ImageError(f"{path} is truncated or damaged ({type(e).__name__}: {e}): save or download it "
                             "again") from None
        return to_cifar(image)


def check_pixels(image, name):
    """An ImageError unless the PIL image (opened, not yet decoded) has at most MAX_PIXELS pixels."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageError(f"{name} is {width}x{height}, {width * height:,} pixels: {TOO_LARGE}")
    if width * height == 0:
        raise ImageError(f"{name} has no pixels ({width}x{height})")


def from_array(array):
    """A numpy picture -> PIL image: HxW grey, HxWx3 RGB or HxWx4 RGBA, uint8 or 16-bit (uint16, scaled to 8
    bits as x / 257, rounded); an ImageError for anything else."""
    array = np.asarray(array)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or array.dtype not in (
            np.uint8, np.uint16):
        raise ImageError(f"an array of {array.dtype} {array.shape} is not a picture: give HxW (grey), HxWx3 (RGB) "
                         "or HxWx4 (RGBA), uint8 or uint16")
    if array.dtype == np.uint16:
        array = ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


def to_rgb(image):
    """A PIL image in any mode -> RGB (step 2 of the module's rule): 16-bit and 32-bit integer grey (modes I;16,
    I, which old Pillows give 16-bit PNGs) scaled from 0-65535, transparency composited over white."""
    if image.mode.startswith("I"):
        image = from_array(np.clip(np.asarray(image), 0, 65535).astype(np.uint16))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        image = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image)
    return image.convert("RGB")


def to_cifar(image):
    """A PIL image -> uint8 [3072], R, G, B planes of 32x32: upright, RGB, its largest central square brought
    to 32x32 with the BOX filter (the module's rule)."""
    image = to_rgb(ImageOps.exif_transpose(image))
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    if image.size != (SIZE, SIZE):
        image = image.resize((SIZE, SIZE), Image.Resampling.BOX, box=(left, top, left + side, top + side))
    return np.asarray(image).transpose(2, 0, 1).reshape(3 * SIZE * SIZE)


def read_image(picture):
    """One picture -> uint8 [3072]: a file's path (read_file), a PIL image or a numpy array (from_array)."""
    if isinstance(picture, (str, os.PathLike)):
        return read_file(picture)
    if isinstance(picture, np.ndarray):
        picture = from_array(picture)
    if isinstance(picture, Image.Image):
        check_pixels(picture, getattr(picture, "filename", "") or "the picture")
        return to_cifar(picture)
    raise TypeError(f"a picture is a file's path, a PIL image or a numpy array, not a {type(picture).__name__}")


def read_images(pictures):
    """A list of pictures (each as read_image takes) -> uint8 [N, 3072], the CIFAR batches' layout."""
    return np.array([read_image(picture) for picture in pictures], np.uint8).reshape(-1, 3 * SIZE * SIZE)
