"""Image bytes to an RGB uint8 array of the model's input size (and a thumbnail for the map)."""

from __future__ import annotations

import io
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

_ORIENTATIONS_THAT_SWAP_AXES = (5, 6, 7, 8)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


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
            f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
            "(--max_image_pixels)"
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

    def apply(self, image: Image.Image) -> Image.Image:
        """The image, size x size, by this rule."""
        resample = FILTERS[self.interpolation]
        if self.policy == "shorter_side":
            return _shorter_side_then_centre(image, self.shorter_side, self.size, resample)
        box = crop_box(*image.size) if self.policy == "center_crop" else None
        if image.size == (self.size, self.size):
            return image
        return image.resize((self.size, self.size), resample, box=box)


def _shorter_side_then_centre(
    image: Image.Image, shorter_side: int, size: int, resample: Image.Resampling
) -> Image.Image:
    # pytorch/vision, torchvision/transforms/functional.py: _compute_resized_output_size
    # scales the shorter edge to shorter_side and the longer one to
    # int(shorter_side * long / short); resize on a PIL image is then
    # image.resize((w, h), resample); center_crop takes its offsets as
    # int(round((h - size) / 2.0)), Python's round, halves to even. The resized image
    # is never smaller than the crop (Resize checks shorter_side >= size), so
    # center_crop's padding does not arise.
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    scaled_long = int(shorter_side * long / short)
    scaled = (shorter_side, scaled_long) if width <= height else (scaled_long, shorter_side)
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
    max_pixels: int = 100_000_000,
    thumbnail_size: int = 0,
) -> DecodedImage:
    """Decodes the first frame, applies EXIF orientation, converts and resizes by the rule.

    thumbnail_size > 0 also makes a JPEG thumbnail of the upright image.
    """
    with Image.open(io.BytesIO(data)) as image:
        _check_pixel_limit(image, max_pixels)
        width, height = _displayed_size(image)
        if jpeg_draft and image.format == "JPEG":
            # draft keeps both sides at least the requested one.
            draft = max(resize.scaled_side, thumbnail_size) * DRAFT_OVERSAMPLE
            image.draft(None, (draft, draft))
        # Animated GIF/WebP and multi-page TIFF open on their first frame.
        rgb = to_rgb(ImageOps.exif_transpose(image))
        pixels = np.asarray(resize.apply(rgb), dtype=np.uint8)
        small = thumbnail(rgb, thumbnail_size) if thumbnail_size > 0 else None
    return DecodedImage(pixels=pixels, width=width, height=height, thumbnail=small)
