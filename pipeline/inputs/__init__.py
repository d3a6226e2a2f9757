"""The input side: the CSV of image URIs, reading each image's bytes, decoding and resizing."""

from pipeline.inputs.images import DEFAULT_MAX_IMAGE_PIXELS, Resize, decode
from pipeline.inputs.loading import (
    DEFAULT_MAX_IMAGE_BYTES,
    Decoding,
    LoadImageFn,
    LoadImages,
    read_bytes,
)
from pipeline.inputs.sources import (
    InputError,
    ReadImageUris,
    check_glob,
    count_inputs,
    first_uris,
    is_glob,
    keep_columns_layout,
)

__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "Decoding",
    "InputError",
    "LoadImageFn",
    "LoadImages",
    "ReadImageUris",
    "Resize",
    "check_glob",
    "count_inputs",
    "decode",
    "first_uris",
    "is_glob",
    "keep_columns_layout",
    "read_bytes",
]
