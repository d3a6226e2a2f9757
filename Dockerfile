# One image for both jobs a Flex Template needs: the launcher (which runs
# templates/main.py to build and submit the pipeline) and every Dataflow worker
# (which runs Beam's SDK harness). Everything is installed here, at build time,
# so neither the launcher nor a worker runs pip when it starts.
#
# Build it with Cloud Build (cloudbuild.yaml); it passes IMAGE, the tag it pushes, and LOCK,
# the lock it installs (the GPU variant: docs/dataflow.md, "GPU workers").

# The versions, stated once. tests/test_flex_template.py fails when they disagree
# with requirements.txt, requirements.lock and pyproject.toml.
ARG PYTHON_VERSION=3.11
ARG BEAM_VERSION=2.77.0
ARG LAUNCHER_IMAGE=gcr.io/dataflow-templates-base/python311-template-launcher-base:20230622_RC00

# Only its launcher binary is used.
FROM ${LAUNCHER_IMAGE} AS launcher

# Only its worker boot program (/opt/apache/beam) is used: Beam's SDK image also
# preinstalls about 150 Python packages of its own choosing, which could fight the lock.
FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam

# A plain Python, as in Google's own Python Flex Template sample, so that the lock
# alone decides every installed package (but pip itself, the base image's).
FROM python:${PYTHON_VERSION}-slim

COPY --from=launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher
COPY --from=beam /opt/apache/beam /opt/apache/beam

WORKDIR /template

# The lock first, so that code changes reuse this layer. --require-hashes: every
# package is the exact file that was tested; --no-deps: the lock names every package.
# check_lock.py fails the build if anything else is installed.
# LOCK chooses the lock: requirements.lock for CPU workers, requirements-gpu.lock (the same
# pins plus TensorFlow's CUDA wheels) for NVIDIA workers (cloudbuild.yaml's _LOCK;
# docs/dataflow.md, "GPU workers"). Either is installed, and checked, as requirements.lock.
ARG LOCK=requirements.lock
COPY ${LOCK} ./requirements.lock
COPY templates/check_lock.py ./
RUN pip install --no-cache-dir --no-deps --require-hashes -r requirements.lock \
    && pip check \
    && python check_lock.py requirements.lock

COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY templates/main.py ./main.py
# A plain (not editable) install, so that workers import the copy in site-packages;
# --no-build-isolation builds it with the locked setuptools instead of fetching one.
RUN pip install --no-cache-dir --no-deps --no-build-isolation . && pip check

# Workers often have no public IP, so the ImageNet weights of the default model are
# fetched now, loaded once by Keras to prove them, and found by Keras at run time under
# KERAS_HOME. The launcher never loads a model.
ENV KERAS_HOME=/opt/keras
RUN python -c "import keras; keras.applications.ResNet50(weights='imagenet', include_top=False, input_shape=(224, 224, 3))"

# The keras-hub models' pretrained presets named by PRESETS (spaces or commas between names;
# cloudbuild.yaml's _PRESETS), for the same reason: each is downloaded as keras-hub's
# from_preset downloads it, copied to /opt/presets/<model>/, and loaded once by keras-hub to
# prove it; kagglehub's download cache is dropped in the same layer. The launcher refuses
# --weights pretrained for a keras-hub model not baked in (pipeline/run/preflight.py), and the
# workers load the baked copy (pipeline/models/hub.py). About 600 MB for CLIP ViT-B/16 and
# 90 MB for DINOv2 small (docs/dataflow.md, "Pretrained presets").
ARG PRESETS="clip_vit_base_patch16 dinov2_small"
ENV PIPELINE_PRESETS=/opt/presets
COPY templates/bake_presets.py ./
RUN KAGGLEHUB_CACHE=/tmp/kagglehub python bake_presets.py "${PIPELINE_PRESETS}" "${PRESETS}" \
    && rm -rf /tmp/kagglehub

# The launcher runs this file; no FLEX_TEMPLATE_PYTHON_REQUIREMENTS_FILE or
# FLEX_TEMPLATE_PYTHON_SETUP_FILE, which would make it pip-install at every launch.
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/main.py

# The image's own tag: main.py makes the workers run this same image.
ARG IMAGE=""
ENV PIPELINE_CONTAINER_IMAGE=${IMAGE}

# Beam's worker boot program; Dataflow starts the launcher binary explicitly.
ENTRYPOINT ["/opt/apache/beam/boot"]
