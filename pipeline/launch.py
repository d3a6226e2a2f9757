"""Flex Template launch: workers run the launcher's own image; the launcher never waits."""

from __future__ import annotations

import os
from collections.abc import Sequence

IMAGE_VARIABLE = "PIPELINE_CONTAINER_IMAGE"
_IMAGE_FLAGS = ("--sdk_container_image", "--worker_harness_container_image")


def with_worker_image(argv: Sequence[str], image: str | None) -> list[str]:
    """Adds --sdk_container_image=image unless the caller chose a worker image."""
    argv = list(argv)
    if any(arg.split("=", 1)[0] in _IMAGE_FLAGS for arg in argv):
        return argv
    if not image:
        raise SystemExit(
            f"error: {IMAGE_VARIABLE} is not set (build the image with --build-arg IMAGE=TAG) "
            "and no --sdk_container_image was given: workers would lack this pipeline"
        )
    # sdk_location=container: the SDK is in the image; staging another copy is waste.
    return [*argv, f"--sdk_container_image={image}", "--sdk_location=container"]


def main(argv: Sequence[str]) -> int:
    argv = with_worker_image(argv, os.environ.get(IMAGE_VARIABLE))
    # Imported once the image is known: an image that lacks it fails in a tenth of a
    # second, not after Beam's imports.
    from pipeline import cli

    # The launcher passes --runner DataflowRunner, so cli.run returns once the job is
    # submitted: a Flex Template launcher must not block on the job.
    return cli.main(argv)
