# One image for both jobs a Flex Template needs: the launcher (which runs
# templates/main.py to build and submit the pipeline) and every Dataflow worker
# (which runs Beam's SDK harness). Everything is installed here, at build time,
# so neither the launcher nor a worker runs pip when it starts.
#
# Build it with Cloud Build (cloudbuild.yaml); it passes IMAGE, the tag it pushes.

# The versions, stated once. tests/test_flex_template.py fails when they disagree
# with requirements.txt and pyproject.toml.
ARG PYTHON_VERSION=3.11
ARG BEAM_VERSION=2.77.0
ARG LAUNCHER_IMAGE=gcr.io/dataflow-templates-base/python311-template-launcher-base:20230622_RC00

# Only its launcher binary is used.
FROM ${LAUNCHER_IMAGE} AS launcher

# Beam's own SDK image: the worker boot program and the exact Beam version the
# launcher will submit with (Dataflow requires the two to match).
FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION}

COPY --from=launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher

WORKDIR /template

# Pinned requirements first, so that code changes reuse this layer.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt && pip check

COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY templates/main.py ./main.py
# --no-deps: everything it needs is already pinned above; a plain (not editable)
# install so that workers import the copy in site-packages.
RUN pip install --no-cache-dir --no-deps . && pip check

# Workers often have no public IP, so the default model's ImageNet weights are
# downloaded now and found by Keras at run time under KERAS_HOME.
ENV KERAS_HOME=/opt/keras
RUN python -c "import keras; keras.applications.ResNet50(weights='imagenet', include_top=False, input_shape=(224, 224, 3))"

# The launcher runs this file; no FLEX_TEMPLATE_PYTHON_REQUIREMENTS_FILE or
# FLEX_TEMPLATE_PYTHON_SETUP_FILE, which would make it pip-install at every launch.
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/main.py

# The image's own tag: main.py makes the workers run this same image.
ARG IMAGE=""
ENV PIPELINE_CONTAINER_IMAGE=${IMAGE}

# Beam's worker boot program; Dataflow starts the launcher binary explicitly.
ENTRYPOINT ["/opt/apache/beam/boot"]
