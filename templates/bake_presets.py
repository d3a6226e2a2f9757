"""Bakes keras-hub pretrained presets into a folder, one sub-folder per model.

The Dockerfile runs it with its PRESETS build argument, so that workers with no internet
access load each named model's published preset from the image (pipeline/models/hub.py,
PIPELINE_PRESETS). Each preset is downloaded as keras-hub's from_preset downloads a Kaggle
preset (kagglehub's model_download, into kagglehub's cache), copied to FOLDER/<model>/,
checked against the model table, and loaded once by keras-hub as the workers load it. A name
that is not a keras-hub model of the table fails before anything is downloaded.

    python bake_presets.py FOLDER [MODELS ...]

MODELS are model names separated by spaces or commas: the build argument is one word.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import sys

from pipeline.models.backbones import BACKBONES, KERAS_HUB, ModelSpec
from pipeline.models.weights import (
    BAKED_PRESETS,
    WeightsUnavailableError,
    baked_preset,
    check_preset_folder,
)


class BakeError(RuntimeError):
    """A preset could not be downloaded, checked or loaded; the image must not be built."""


def keras_hub_models() -> list[str]:
    return [name for name, line in BACKBONES.items() if line.library == KERAS_HUB]


def requested(words: list[str]) -> list[str]:
    """The model names in the words, in order, each once."""
    names = [name for word in words for name in re.split(r"[\s,]+", word) if name]
    return list(dict.fromkeys(names))


def check_names(names: list[str]) -> None:
    """Raises BakeError unless every name is a keras-hub model of the table."""
    wrong = [name for name in names if name not in keras_hub_models()]
    if not wrong:
        return
    described = ", ".join(
        f"{name} (a {BACKBONES[name].library} model, whose weights are not a preset)"
        if name in BACKBONES
        else f"{name} (not in the table)"
        for name in wrong
    )
    raise BakeError(
        f"PRESETS names {described}; it takes keras-hub models of "
        f"pipeline/models/backbones.py: {', '.join(keras_hub_models())}"
    )


def download(model: str) -> str:
    """The local folder of model's published preset, fetched into kagglehub's cache once,
    as keras-hub's from_preset fetches a kaggle:// preset."""
    import kagglehub

    handle = BACKBONES[model].preset
    try:
        return kagglehub.model_download(handle.removeprefix("kaggle://"))
    except Exception as error:
        text = str(error).strip()
        reason = f"{type(error).__name__}: {text.splitlines()[0][:300]}" if text else ""
        raise BakeError(f"cannot download the preset of {model} ({handle}: {reason})") from error


def bake(model: str, root: str) -> str:
    """root/<model>: a copy of the downloaded preset, checked against the table; a
    failed copy never takes the final name."""
    source = download(model)
    target = os.path.join(root, model)
    partial = os.path.join(root, f".{model}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    try:
        check_preset_folder(partial, model, BACKBONES[model])
    except WeightsUnavailableError as error:
        shutil.rmtree(partial, ignore_errors=True)
        raise BakeError(f"the preset of {model} does not fit its table line: {error}") from error
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return target


def prove(model: str, root: str) -> int:
    """Loads root/<model> once, through the path the workers take; its parameter count."""
    import keras

    from pipeline.models import hub

    os.environ[BAKED_PRESETS] = root
    spec = ModelSpec.of(model, "pretrained", "avg", 0)
    folder = os.path.join(root, model)
    if baked_preset(model) != folder or hub.preset_location(spec) != folder:
        raise BakeError(f"workers would not find {folder} as the preset of {model}")
    try:
        backbone = hub.load_backbone(spec)
    except WeightsUnavailableError as error:
        raise BakeError(str(error)) from error
    parameters = backbone.count_params()
    del backbone
    keras.backend.clear_session()
    gc.collect()
    return parameters


def folder_size(folder: str) -> int:
    return sum(
        os.path.getsize(os.path.join(path, name))
        for path, _, names in os.walk(folder)
        for name in names
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="where the presets go, one sub-folder per model")
    parser.add_argument("models", nargs="*", help="model names, separated by spaces or commas")
    args = parser.parse_args(argv)
    names = requested(args.models)
    try:
        check_names(names)
    except BakeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    root = os.path.abspath(args.folder)
    os.makedirs(root, exist_ok=True)
    for model in names:
        try:
            folder = bake(model, root)
            parameters = prove(model, root)
        except BakeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        size = folder_size(folder) / 1e6
        print(f"baked {model} into {folder}: {parameters:,} parameters, {size:,.1f} MB")
    if not names:
        print("no presets named: a keras-hub model then runs only with --weights gs://FOLDER")
    return 0


if __name__ == "__main__":
    sys.exit(main())
