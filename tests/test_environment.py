"""One lock for the whole environment: the venv, the image and the tests hold the same versions."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from support import REPO

sys.path.insert(0, str(REPO / "templates"))
from check_lock import normalise, pinned

RUNTIME_LOCK = REPO / "requirements.lock"
DEV_LOCK = REPO / "requirements-dev.lock"
GPU_LOCK = REPO / "requirements-gpu.lock"


def check_lock(lock, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "templates" / "check_lock.py"), str(lock), *extra],
        capture_output=True,
        text=True,
    )


def top_level_pins(requirements: str) -> dict[str, str]:
    found = re.findall(r"^([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==(\S+)$", requirements, re.MULTILINE)
    return {normalise(name): version for name, version in found}


def test_the_venv_holds_exactly_the_dev_lock():
    result = check_lock(DEV_LOCK)
    assert result.returncode == 0, result.stderr
    # pip's own view agrees: `pip freeze` lists exactly the lock's pins (and pip itself).
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    listed = top_level_pins(frozen)
    listed.pop("pip")
    assert listed == pinned(DEV_LOCK)


def test_a_package_that_differs_from_the_lock_is_named(tmp_path):
    pins = pinned(DEV_LOCK)
    lock = tmp_path / "requirements.lock"
    lines = [f"{name}=={version}" for name, version in pins.items() if name != "numpy"]
    lock.write_text("\n".join([*lines, "numpy==0.0.1", "not-installed-anywhere==1.0"]) + "\n")
    result = check_lock(lock)
    assert result.returncode == 1
    problems = result.stderr.splitlines()[1:]
    assert sorted(line.strip() for line in problems) == [
        "not-installed-anywhere: lock 1.0, installed absent",
        f"numpy: lock 0.0.1, installed {pins['numpy']}",
    ]


def test_every_lock_line_is_pinned_with_hashes():
    for lock in (RUNTIME_LOCK, DEV_LOCK, GPU_LOCK):
        text = lock.read_text()
        entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
        assert len(entries) == len(pinned(lock)) > 100
        for entry in entries:
            assert re.match(r"^[A-Za-z0-9._-]+(\[[^\]]*\])?==\S+ \\\n", entry), entry[:80]
            assert "--hash=sha256:" in entry, entry[:80]


def test_the_runtime_lock_is_the_dev_locks_runtime_part_and_keeps_the_top_level_pins():
    runtime, dev = pinned(RUNTIME_LOCK), pinned(DEV_LOCK)
    assert {name: dev.get(name) for name in runtime} == runtime
    top = top_level_pins((REPO / "requirements.txt").read_text())
    assert len(top) == 13
    assert {name: runtime.get(name) for name in top} == top
    dev_top = top_level_pins((REPO / "requirements-dev.txt").read_text())
    assert {name: dev.get(name) for name in dev_top} == dev_top


def cuda_wheels_of_tensorflow() -> dict[str, SpecifierSet]:
    """What the installed TensorFlow's and-cuda extra requires: name -> version range."""
    wheels = {}
    for line in metadata.requires("tensorflow") or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker and marker.evaluate({"extra": "and-cuda"}) and not marker.evaluate({"extra": ""}):
            wheels[normalise(requirement.name)] = requirement.specifier
    return wheels


def test_the_gpu_lock_is_the_runtime_lock_plus_tensorflows_cuda_wheels():
    runtime, gpu = pinned(RUNTIME_LOCK), pinned(GPU_LOCK)
    # Every package both images hold is the same file version, so the two images differ
    # only where the hardware does.
    assert {name: gpu.get(name) for name in runtime} == runtime
    cuda = cuda_wheels_of_tensorflow()
    assert len(cuda) >= 10 and all(name.startswith("nvidia-") for name in cuda)
    extra = {name: version for name, version in gpu.items() if name not in runtime}
    assert set(extra) == set(cuda)
    for name, version in extra.items():
        assert version in cuda[name], (name, version, str(cuda[name]))
    requirements = (REPO / "requirements-gpu.txt").read_text()
    assert re.search(r"^-r requirements\.txt$", requirements, re.MULTILINE)
    [pin] = re.findall(r"^tensorflow\[and-cuda\]==(\S+)$", requirements, re.MULTILINE)
    assert pin == runtime["tensorflow"] == metadata.version("tensorflow")


def dockerfile_runs() -> list[str]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    return [line[4:] for line in text.splitlines() if line.startswith("RUN ")]


def test_the_image_installs_exactly_the_lock_it_is_built_with():
    """LOCK (by default the runtime lock; requirements-gpu.lock for NVIDIA workers) is
    copied in as requirements.lock, which pip installs and check_lock.py checks."""
    text = (REPO / "Dockerfile").read_text()
    final_stage = text.rsplit("\nFROM ", 1)[1]
    assert final_stage.startswith("python:${PYTHON_VERSION}-slim\n")
    assert re.findall(r"^ARG LOCK=(\S+)$", final_stage, re.MULTILINE) == ["requirements.lock"]
    assert "COPY ${LOCK} ./requirements.lock\n" in final_stage
    assert final_stage.index("ARG LOCK=") < final_stage.index("COPY ${LOCK}")
    assert "COPY templates/check_lock.py ./" in final_stage
    assert final_stage.count("requirements-gpu.lock") == 1  # named once, in the comment
    installs = [part for run in dockerfile_runs() for part in run.split("&&")
                if "pip install" in part]  # fmt: skip
    assert [" ".join(i.split()) for i in installs] == [
        "pip install --no-cache-dir --no-deps --require-hashes -r requirements.lock",
        "pip install --no-cache-dir --no-deps --no-build-isolation .",
    ]
    checks = [run for run in dockerfile_runs() if "check_lock.py requirements.lock" in run]
    assert len(checks) == 1 and "pip check" in checks[0]


def test_make_builds_the_venv_from_the_dev_lock():
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("$(VENV)/.installed: requirements-dev.lock", 1)[1].split("\n\n")[0]
    # uv installs the lock (pip where uv cannot), and uv itself comes from the lock's
    # own pinned and hashed lines.
    assert (
        "uv pip install --python $(BIN)/python --quiet --no-deps --require-hashes "
        "--compile-bytecode -r requirements-dev.lock" in recipe
    )
    assert (
        "|| $(BIN)/python -m pip install --quiet --no-deps --require-hashes "
        "-r requirements-dev.lock" in recipe
    )
    assert "requirements-dev.lock > $(UV_PIN)" in recipe
    assert "pip install --quiet --no-deps --require-hashes -r $(UV_PIN)" in recipe
    assert "rm -rf $(VENV)" in recipe
    lock = makefile.split("\nlock:", 1)[1].split("\n\n")[0]
    compiles = [line.split("uv pip compile ", 1)[1] for line in lock.splitlines()
                if "uv pip compile" in line]  # fmt: skip
    # Each lock from its .txt with the same flags; the dev and GPU locks held to the runtime's.
    assert compiles == [
        "requirements.txt $(LOCK_FLAGS) -o requirements.lock",
        "requirements-dev.txt -c requirements.lock $(LOCK_FLAGS) -o requirements-dev.lock",
        "requirements-gpu.txt -c requirements.lock $(LOCK_FLAGS) -o requirements-gpu.lock",
    ]
    for path in (RUNTIME_LOCK, DEV_LOCK, GPU_LOCK):
        assert path.read_text().startswith(
            "# This file was autogenerated by uv via the following command:\n#    make lock\n"
        ), path.name
