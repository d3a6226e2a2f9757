"""The input side: the CSV, glob, Parquet manifest or WebDataset shards of image URIs,
reading each image's bytes (fetching http(s) ones safely and politely, streaming shards),
decoding and resizing."""

from pipeline.inputs.addresses import AddressPolicy
from pipeline.inputs.fetching import DEFAULT_USER_AGENT, FetchError, FetchSettings
from pipeline.inputs.images import DEFAULT_MAX_IMAGE_PIXELS, Resize, decode
from pipeline.inputs.loading import (
    DEFAULT_MAX_IMAGE_BYTES,
    CountFetched,
    Decoding,
    LoadImageFn,
    LoadImages,
    read_bytes,
)
from pipeline.inputs.manifests import is_manifest
from pipeline.inputs.sources import (
    InputError,
    ReadImageUris,
    check_glob,
    count_inputs,
    first_uris,
    is_glob,
    keep_columns_layout,
    lists_shards,
)

__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_USER_AGENT",
    "AddressPolicy",
    "CountFetched",
    "Decoding",
    "FetchError",
    "FetchSettings",
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
    "is_manifest",
    "keep_columns_layout",
    "lists_shards",
    "read_bytes",
]
