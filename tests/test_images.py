"""Decoding: every Pillow mode to RGB, orientation, resize policies, bombs, JPEG draft."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from support import PHOTO_PATHS, encode, make_awkward_images, photo, write_bomb

from pipeline.inputs.images import DRAFT_OVERSAMPLE, decode, to_rgb

SIZE = 224
# docs/input.md, "Decoding": draft-mode JPEG decoding stays within this mean absolute
# difference (in 0-255 levels) of a full decode followed by the same resize.
DRAFT_MEAN_TOLERANCE = 0.5


def pixels(data: bytes, **kwargs) -> np.ndarray:
    return decode(data, SIZE, **kwargs).pixels.astype(np.float64)


def squash(image: Image.Image) -> np.ndarray:
    return np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.float64)


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    return make_awkward_images(tmp_path_factory.mktemp("awkward"))


def read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def test_output_is_uint8_rgb_of_the_model_size(awkward):
    for path in [*PHOTO_PATHS, *awkward.values()]:
        decoded = decode(read(path), SIZE)
        assert decoded.pixels.shape == (SIZE, SIZE, 3), path
        assert decoded.pixels.dtype == np.uint8


def test_rgba_is_composited_onto_white_like_numpy_alpha_blending(awkward):
    with Image.open(awkward["rgba.png"]) as image:
        rgba = np.asarray(image, dtype=np.float64)
    alpha = rgba[..., 3:] / 255
    blended = rgba[..., :3] * alpha + 255 * (1 - alpha)
    expected = squash(Image.fromarray(np.round(blended).astype(np.uint8)))
    assert np.abs(pixels(read(awkward["rgba.png"])) - expected).max() <= 1


def test_palette_transparency_becomes_white(awkward):
    with Image.open(awkward["palette_transparent.png"]) as image:
        transparent = np.asarray(image) == 0
        rgb = np.asarray(to_rgb(image))
    assert transparent.any()
    assert (rgb[transparent] == 255).all()
    assert (rgb[~transparent] != 255).any()


def test_sixteen_bit_grayscale_keeps_its_high_byte(awkward):
    with Image.open(awkward["gray16.png"]) as image:
        assert image.mode.startswith("I")
        high_byte = (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
    expected = squash(Image.fromarray(high_byte).convert("RGB"))
    assert np.array_equal(pixels(read(awkward["gray16.png"])), expected)


def test_cmyk_jpeg_matches_its_rgb_source(awkward):
    expected = squash(photo("coffee.png"))
    assert np.abs(pixels(read(awkward["cmyk.jpg"]), jpeg_draft=False) - expected).mean() < 3


def test_exif_orientation_is_applied(awkward):
    rotated = decode(read(awkward["exif_rotated.png"]), SIZE)
    upright = decode(read(awkward["upright.png"]), SIZE)
    assert np.array_equal(rotated.pixels, upright.pixels)
    assert (rotated.width, rotated.height) == (upright.width, upright.height) == (451, 300)


def test_animation_and_multipage_files_give_their_first_frame(awkward):
    with Image.open(awkward["animated.gif"]) as gif:
        first = squash(gif.convert("RGB"))
    assert np.array_equal(pixels(read(awkward["animated.gif"])), first)
    with Image.open(awkward["multipage.tiff"]) as tiff:
        assert tiff.n_frames == 2
        first_page = squash(tiff.convert("RGB"))
    assert np.array_equal(pixels(read(awkward["multipage.tiff"])), first_page)


def test_gray_bilevel_webp_tiny_and_extreme_shapes_decode(awkward):
    camera = squash(photo("camera.png").convert("RGB"))
    assert np.array_equal(pixels(read(str(PHOTO_PATHS[2]))), camera)
    bilevel = pixels(read(awkward["bilevel.png"]))
    # 1-bit pixels are black (0) or white (255) before resizing; the dithering keeps
    # the photograph's brightness.
    with Image.open(awkward["bilevel.png"]) as source:
        black_and_white = source.convert("L").convert("RGB")
    assert set(np.unique(np.asarray(black_and_white))) == {0, 255}
    assert np.array_equal(bilevel, squash(black_and_white))
    assert abs(float(bilevel.mean()) - float(camera.mean())) < 8
    webp = pixels(read(awkward["photo.webp"]))
    assert np.abs(webp - squash(photo("chelsea.png"))).mean() < 4
    one = pixels(read(awkward["one_pixel.png"]))
    assert (one == one[0, 0]).all()
    for name in ("wide.png", "tall.png"):
        assert decode(read(awkward[name]), SIZE, policy="center_crop").pixels.shape == (
            SIZE,
            SIZE,
            3,
        )


def test_center_crop_takes_the_largest_centred_square():
    chelsea = photo("chelsea.png")  # 451 x 300
    left = (451 - 300) // 2
    square = Image.fromarray(np.asarray(chelsea)[:, left : left + 300])
    expected = squash(square)
    difference = np.abs(pixels(encode(chelsea, "PNG"), policy="center_crop") - expected)
    # Resizing inside the source lets the filter see one pixel beyond the crop's edge.
    assert difference.mean() < 0.1 and difference.max() <= 3


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    write_bomb(tmp_path / "bomb.png", side=12_000)
    with pytest.raises(Image.DecompressionBombError, match="max_image_pixels"):
        decode((tmp_path / "bomb.png").read_bytes(), SIZE)
    small = encode(photo("chelsea.png"), "PNG")
    with pytest.raises(Image.DecompressionBombError):
        decode(small, SIZE, max_pixels=451 * 300 - 1)
    assert decode(small, SIZE, max_pixels=451 * 300).pixels.shape == (SIZE, SIZE, 3)


def camera_sized_jpegs() -> list[tuple[str, bytes]]:
    made = []
    for name in ("astronaut.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg"):
        source = photo(name).convert("RGB")
        for size in ((640, 480), (1920, 1080), (4000, 3000)):
            made.append((f"{name}@{size}", encode(source.resize(size), "JPEG", quality=90)))
    return made


def test_jpeg_draft_stays_within_the_documented_tolerance():
    assert DRAFT_OVERSAMPLE == 2
    worst = 0.0
    for name, data in camera_sized_jpegs():
        with Image.open(io.BytesIO(data)) as image:
            image.draft(None, (SIZE * DRAFT_OVERSAMPLE,) * 2)
            large = image.size[0] >= 4 * SIZE
        difference = np.abs(pixels(data) - pixels(data, jpeg_draft=False)).mean()
        worst = max(worst, difference)
        if large:
            assert difference > 0, f"{name}: draft decoding did not engage"
        assert difference <= DRAFT_MEAN_TOLERANCE, name
    assert worst > 0


@pytest.mark.parametrize("name", ["chelsea.png", "rocket.jpg", "camera.png"])
def test_thumbnail_is_a_small_jpeg_of_the_whole_upright_image(name):
    source = photo(name)
    decoded = decode(encode(source.convert("RGB"), "PNG"), SIZE, thumbnail_size=128)
    with Image.open(io.BytesIO(decoded.thumbnail)) as thumbnail:
        assert thumbnail.format == "JPEG"
        assert max(thumbnail.size) == 128
        assert thumbnail.width / thumbnail.height == pytest.approx(
            source.width / source.height, abs=0.02
        )
        small = np.asarray(thumbnail.convert("RGB"), dtype=np.float64)
    reference = np.asarray(source.convert("RGB").resize(thumbnail.size), dtype=np.float64)
    assert np.abs(small - reference).mean() < 6  # JPEG quality 75 on a 128-pixel image
    assert len(decoded.thumbnail) < 16_000
    assert decode(encode(source.convert("RGB"), "PNG"), SIZE).thumbnail is None


def test_thumbnail_follows_exif_orientation(awkward):
    rotated = decode(read(awkward["exif_rotated.png"]), SIZE, thumbnail_size=64)
    upright = decode(read(awkward["upright.png"]), SIZE, thumbnail_size=64)
    with (
        Image.open(io.BytesIO(rotated.thumbnail)) as a,
        Image.open(io.BytesIO(upright.thumbnail)) as b,
    ):
        assert a.size == b.size == (64, 43)
        difference = np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean()
    assert difference < 3
