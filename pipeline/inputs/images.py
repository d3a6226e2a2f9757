"""Image bytes to an RGB uint8 array of the model's input size (and a thumbnail for the map)."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

# Transparent pixels are shown on white, as viewers and web pages show them.
BACKGROUND = (255, 255, 255, 255)

# JPEG draft decoding may shrink by 2, 4 or 8, but only as far as this many times the
# target size, so the final resize still averages several source pixels per output
# pixel; docs/input.md, "Decoding", gives the measured effect on the output.
DRAFT_OVERSAMPLE = 2

THUMBNAIL_QUALITY = 75

DEFAULT_MAX_IMAGE_PIXELS = 100_000_000  # --max_image_pixels: larger ones are bombs

_ORIENTATIONS_THAT_SWAP_AXES = (5, 6, 7, 8)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# Pillow's own bomb check: "Image size (N pixels) exceeds limit of M pixels, ...".
_PILLOWS_BOMB = re.compile(r"Image size \((\d+) pixels\) exceeds limit")


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # (size, size, 3) uint8
    width: int  # source size as displayed, after EXIF orientation
    height: int
    thumbnail: bytes | None = None  # JPEG, longer side thumbnail_size pixels


def _check_pixel_limit(image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        # Raised before any pixel is decoded: Image.open reads only the header.
        raise Image.DecompressionBombError(
            f"{width}x{height} = {width * height} pixels, more than --max_image_pixels {max_pixels}"
        )


def _check_resize(resize: Resize, size: tuple[int, int], max_pixels: int) -> None:
    width, height = resize.largest_step(*size)
    if width * height > max_pixels:
        # Also raised before any pixel is decoded: a 161-byte PNG of 1 x 20000 pixels
        # would otherwise be scaled to 224 x 4,480,000 (4 GB) for CLIP's crop.
        raise Image.DecompressionBombError(
            f"resizing {size[0]}x{size[1]} ({resize.describe()}) makes a {width}x{height} "
            f"image on the way ({width * height} pixels), more than --max_image_pixels "
            f"{max_pixels}"
        )


def _displayed_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    if image.getexif().get(ImageOps.ExifTags.Base.Orientation) in _ORIENTATIONS_THAT_SWAP_AXES:
        return height, width
    return width, height


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts any Pillow mode to RGB, compositing transparency onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        # Pillow's own conversion clips 16-bit values at 255, turning most of the image
        # white; keep the high byte instead.
        high_bytes = np.asarray(image).astype(np.uint32).clip(0, 65535) >> 8
        image = Image.fromarray(high_bytes.astype(np.uint8), mode="L")
    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND)
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred square, computed as keras.utils.load_img does."""
    side = min(width, height)
    left = (width - side) // 2
    top = (height - side) // 2
    return left, top, left + side, top + side


POLICIES = ("squash", "center_crop", "shorter_side")
FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
# How many source pixels either side of an output pixel's centre each filter reads when
# enlarging; when shrinking, that times the scale (Pillow's src/libImaging/Resample.c).
_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}


@dataclass(frozen=True)
class Resize:
    """How the load step sizes an image for its model.

    squash: the whole image stretched to size x size. center_crop: the largest centred
    square, scaled to size x size (keras.utils.load_img with keep_aspect_ratio=True).
    shorter_side: the shorter edge scaled to shorter_side, then the centre size x size
    cropped (torchvision's Resize(shorter_side) then CenterCrop(size), on a PIL image).

    describe() is what a run records as "resize": "squash" or "center_crop" for the
    bilinear squash and centre crop (the keras.applications rules, and SigLIP 2's
    squash); otherwise the filter, the policy and the sizes: "bicubic squash 224",
    "bicubic center crop 224", "bicubic, shorter side 256, centre crop 224".
    """

    size: int  # the model's input: size x size
    policy: str = "squash"  # "squash" | "center_crop" | "shorter_side"
    interpolation: str = "bilinear"  # "bilinear" | "bicubic"
    shorter_side: int = 0  # for "shorter_side": the shorter edge is scaled to this

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"resize policy {self.policy!r} is not one of {POLICIES}")
        if self.interpolation not in FILTERS:
            raise ValueError(f"interpolation {self.interpolation!r} is not one of {tuple(FILTERS)}")
        if self.size < 1:
            raise ValueError(f"resize size {self.size} is not positive")
        if self.policy == "shorter_side" and self.shorter_side < self.size:
            # Then the resized image always covers the crop, so torchvision's padding of
            # an image smaller than the crop never happens.
            raise ValueError(
                f"shorter side {self.shorter_side} is smaller than the crop {self.size}"
            )
        if self.policy != "shorter_side" and self.shorter_side:
            raise ValueError(f"shorter_side is only for the shorter_side policy, not {self.policy}")

    def describe(self) -> str:
        if self.policy == "shorter_side":
            return (
                f"{self.interpolation}, shorter side {self.shorter_side}, centre crop {self.size}"
            )
        if self.interpolation == "bilinear":
            return self.policy
        return f"{self.interpolation} {self.policy.replace('_', ' ')} {self.size}"

    @property
    def scaled_side(self) -> int:
        """What the first resize scales the shorter edge to (JPEG draft keeps more)."""
        return max(self.size, self.shorter_side)

    def largest_step(self, width: int, height: int) -> tuple[int, int]:
        """The largest image this rule makes from a width x height one on its way to the
        output: for shorter_side the scaled image before the crop, and for every rule
        the image Pillow's resize holds between its pass across and its pass down."""
        support = _SUPPORT[self.interpolation]
        if self.policy == "shorter_side":
            scaled = _scaled_size(width, height, self.shorter_side)
            steps = [scaled, _between_passes((width, height), scaled, None, support)]
        else:
            box = crop_box(width, height) if self.policy == "center_crop" else None
            steps = [_between_passes((width, height), (self.size, self.size), box, support)]
        return max(steps, key=lambda step: step[0] * step[1])

    def apply(self, image: Image.Image) -> Image.Image:
        """The image, size x size, by this rule."""
        resample = FILTERS[self.interpolation]
        if self.policy == "shorter_side":
            return _shorter_side_then_centre(image, self.shorter_side, self.size, resample)
        box = crop_box(*image.size) if self.policy == "center_crop" else None
        if image.size == (self.size, self.size):
            return image
        return image.resize((self.size, self.size), resample, box=box)


def _between_passes(
    source: tuple[int, int],
    output: tuple[int, int],
    box: tuple[float, float, float, float] | None,
    support: float,
) -> tuple[int, int]:
    """What Pillow's resize of source (within box) to output holds between its passes:
    the output's width by the source rows the pass down reads; (0, 0) for one pass."""
    # src/libImaging/Resample.c, ImagingResampleInner: across first, then down, so a
    # tall strip is first widened at its full height.
    width, height = source
    left, top, right, bottom = box or (0, 0, width, height)
    across = output[0] != width or (left, right) != (0, width)
    down = output[1] != height or (top, bottom) != (0, height)
    if not (across and down):
        return 0, 0
    # precompute_coeffs: output row i reads the rows within support * max(scale, 1) of
    # top + (i + 0.5) * scale.
    scale = (bottom - top) / output[1]
    reach = support * max(scale, 1.0)
    first = max(int(top + 0.5 * scale - reach + 0.5), 0)
    last = min(int(bottom - 0.5 * scale + reach + 0.5), height)
    return output[0], last - first


def _scaled_size(width: int, height: int, shorter_side: int) -> tuple[int, int]:
    """torchvision's Resize(shorter_side): the shorter edge to shorter_side, the longer
    to int(shorter_side * long / short)."""
    # pytorch/vision, torchvision/transforms/functional.py: _compute_resized_output_size.
    short, long = (width, height) if width <= height else (height, width)
    scaled_long = int(shorter_side * long / short)
    return (shorter_side, scaled_long) if width <= height else (scaled_long, shorter_side)


def _shorter_side_then_centre(
    image: Image.Image, shorter_side: int, size: int, resample: Image.Resampling
) -> Image.Image:
    # torchvision's resize on a PIL image is image.resize((w, h), resample); center_crop
    # takes its offsets as int(round((h - size) / 2.0)), Python's round, halves to even.
    # The resized image is never smaller than the crop (Resize checks shorter_side >=
    # size), so center_crop's padding does not arise. Resizing only the crop's box
    # instead would move about 1% of the values by a level or two (Pillow passes a box
    # to its C code as 32-bit floats), so decode refuses what this would make too large.
    scaled = _scaled_size(*image.size, shorter_side)
    resized = image.resize(scaled, resample)
    left = round((scaled[0] - size) / 2)
    top = round((scaled[1] - size) / 2)
    return resized.crop((left, top, left + size, top + size))


def thumbnail(image: Image.Image, size: int) -> bytes:
    """A small JPEG of the whole image, aspect ratio kept, longer side size pixels."""
    scale = size / max(image.size)
    shape = tuple(max(1, round(side * scale)) for side in image.size)
    small = image.resize(shape, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return buffer.getvalue()


def decode(
    data: bytes,
    resize: Resize,
    jpeg_draft: bool = True,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    thumbnail_size: int = 0,
) -> DecodedImage:
    """Decodes the first frame, applies EXIF orientation, converts and resizes by the rule.

    thumbnail_size > 0 also makes a JPEG thumbnail of the upright image. An image larger
    than max_pixels, or whose resize would make one on the way, is refused undecoded.
    """
    try:
        return _decode(data, resize, jpeg_draft, max_pixels, thumbnail_size)
    except Image.DecompressionBombError as error:
        # Pillow's own check (in Image.open, and for GIF frames and TIFF tiles as they
        # load) refuses more than twice Image.MAX_IMAGE_PIXELS and names that figure,
        # not the option a user can change.
        pillows = _PILLOWS_BOMB.match(str(error))
        if pillows is None or int(pillows[1]) <= max_pixels:
            raise
        raise Image.DecompressionBombError(
            f"{pillows[1]} pixels, more than --max_image_pixels {max_pixels}"
        ) from error


def _decode(
    data: bytes, resize: Resize, jpeg_draft: bool, max_pixels: int, thumbnail_size: int
) -> DecodedImage:
    with Image.open(io.BytesIO(data)) as image:
        _check_pixel_limit(image, max_pixels)
        width, height = _displayed_size(image)
        if jpeg_draft and image.format == "JPEG":
            # draft keeps both sides at least the requested one.
            draft = max(resize.scaled_side, thumbnail_size) * DRAFT_OVERSAMPLE
            image.draft(None, (draft, draft))
        # The thumbnail needs no check: Pillow first reduces by whole factors (its
        # reducing_gap), so nothing it makes exceeds the source or a few thumbnails.
        _check_resize(resize, _displayed_size(image), max_pixels)
        # Animated GIF/WebP and multi-page TIFF open on their first frame.
        rgb = to_rgb(ImageOps.exif_transpose(image))
        pixels = np.asarray(resize.apply(rgb), dtype=np.uint8)
        small = thumbnail(rgb, thumbnail_size) if thumbnail_size > 0 else None
    return DecodedImage(pixels=pixels, width=width, height=height, thumbnail=small)
