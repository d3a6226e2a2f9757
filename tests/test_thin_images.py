"""Very thin images: --max_image_pixels holds for every image the resize makes on the way,
so one 161-byte PNG cannot take a worker's memory."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from support import REPO, encode, photo

from pipeline.inputs.images import Resize, decode
from pipeline.models import ModelSpec

MAX_PIXELS = 100_000_000  # --max_image_pixels's default
THUMBNAIL = 128  # --map's thumbnail size
LONG = 20_000
SHAPES = {"1x20000": (1, LONG), "20000x1": (LONG, 1)}
# Each rule as a run gets it: the model table's own, or --resize for keras.applications.
RULES = {
    "resnet50 squash": ModelSpec("resnet50", "random").resize("squash"),
    "resnet50 center_crop": ModelSpec("resnet50", "random").resize("center_crop"),
    "siglip2 384": ModelSpec("siglip2_so400m_patch14_384", "random").resize("squash"),
    "clip": ModelSpec("clip_vit_base_patch16", "random").resize("squash"),
    "dinov2": ModelSpec("dinov2_small", "random").resize("squash"),
    "bilinear shorter side": Resize(224, "shorter_side", "bilinear", 256),
}


def thin(width: int, height: int) -> Image.Image:
    """A photograph squeezed into a strip, so every pixel along it differs."""
    return photo("rocket.jpg").convert("RGB").resize((width, height), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def strips() -> dict[str, tuple[Image.Image, bytes]]:
    made = {}
    for name, shape in SHAPES.items():
        image = thin(*shape)
        made[name] = (image, encode(image, "PNG"))
    return made


def reference(image: Image.Image, rule: Resize) -> np.ndarray:
    """The cited transform on the whole strip, for the rules whose every step is small:
    Pillow's resize of the RGB image (squash: the SigLIP 2 processor, keras.applications),
    with keras.utils.load_img's centred box for center_crop."""
    resample = Image.Resampling.BILINEAR
    box = None
    if rule.policy == "center_crop":
        width, height = image.size
        side = min(width, height)
        box = ((width - side) // 2, (height - side) // 2)
        box = (*box, box[0] + side, box[1] + side)
    return np.asarray(image.resize((rule.size, rule.size), resample, box=box))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rule", RULES.values(), ids=RULES.keys())
def test_a_thin_image_is_embedded_or_refused_naming_the_image_it_would_make(rule, shape, strips):
    image, data = strips[shape]
    if rule.policy != "shorter_side":
        # Every step stays small: squash's first pass (Pillow resizes across first) is
        # 224 x 20000 for the tall strip, the centre crop a 1 x 1 box.
        decoded = decode(data, rule, thumbnail_size=THUMBNAIL)
        assert np.array_equal(decoded.pixels, reference(image, rule))
        with Image.open(io.BytesIO(decoded.thumbnail)) as small:
            assert small.size == tuple(THUMBNAIL if side == LONG else 1 for side in image.size)
        return
    # torchvision's Resize(shorter_side) scales the strip to shorter_side x (shorter_side
    # * 20000) before CenterCrop: over a billion pixels.
    side = rule.shorter_side
    scaled = (side, side * LONG) if image.width == 1 else (side * LONG, side)
    with pytest.raises(Image.DecompressionBombError) as refused:
        decode(data, rule, thumbnail_size=THUMBNAIL)
    message = str(refused.value)
    assert f"{scaled[0]}x{scaled[1]}" in message
    assert f"{scaled[0] * scaled[1]} pixels" in message
    assert f"--max_image_pixels {MAX_PIXELS}" in message


# Decodes the images named in argv under every rule, then prints what became of each and
# the process's peak resident memory. The address space is capped at what the imports
# took plus 1 GiB, so a resize that runs away fails here with MemoryError instead of
# taking the test machine's memory.
DECODE = """
import json, os, resource, sys
from PIL import Image
from pipeline.inputs.images import Resize, decode

settings = json.loads(sys.argv[1])
rules = [Resize(**fields) for fields in settings["rules"]]
max_pixels, thumbnail = settings["max_pixels"], settings["thumbnail"]
inputs = [open(path, "rb").read() for path in sys.argv[2:]]
with open("/proc/self/statm") as statm:
    mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
_, hard = resource.getrlimit(resource.RLIMIT_AS)
cap = mapped + 2**30 if hard == resource.RLIM_INFINITY else min(mapped + 2**30, hard)
resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
outcomes = []
for data in inputs:
    for rule in rules:
        try:
            decode(data, rule, max_pixels=max_pixels, thumbnail_size=thumbnail)
            outcomes.append("embedded")
        except Image.DecompressionBombError as error:
            outcomes.append(str(error))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
print(json.dumps({"outcomes": outcomes, "peak_kib": peak}))
"""


def test_decoding_thin_images_takes_no_more_memory_than_a_photograph(strips, tmp_path):
    rules = [dataclasses.asdict(rule) for rule in RULES.values()]
    settings = json.dumps({"rules": rules, "max_pixels": MAX_PIXELS, "thumbnail": THUMBNAIL})
    paths = {"photograph": [tmp_path / "chelsea.png"], "thin": []}
    photo("chelsea.png").save(paths["photograph"][0])
    for name, (_, data) in strips.items():
        (tmp_path / f"{name}.png").write_bytes(data)
        paths["thin"].append(tmp_path / f"{name}.png")
    # Both at once: each is mostly the interpreter's start.
    runs = {
        kind: subprocess.Popen(
            [sys.executable, "-c", DECODE, settings, *map(str, files)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for kind, files in paths.items()
    }
    results = {}
    for kind, run in runs.items():
        stdout, stderr = run.communicate(timeout=120)
        assert run.returncode == 0, f"{kind}: {stderr[-3000:]}"
        results[kind] = json.loads(stdout)
    assert results["photograph"]["outcomes"] == ["embedded"] * len(RULES)
    for outcome in results["thin"]["outcomes"]:
        assert outcome == "embedded" or "--max_image_pixels" in outcome, outcome
    extra_mib = (results["thin"]["peak_kib"] - results["photograph"]["peak_kib"]) / 1024
    print(
        f"peak RSS: photograph {results['photograph']['peak_kib'] / 1024:.0f} MiB, "
        f"thin images {results['thin']['peak_kib'] / 1024:.0f} MiB"
    )
    assert extra_mib < 300, f"thin images took {extra_mib:.0f} MiB more than a photograph"
