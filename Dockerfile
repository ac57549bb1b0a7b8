# syntax=docker/dockerfile:1
# The freshrank image the manifests in infra/ name (freshrank:latest): Python 3.11, torch by
# build argument, the package installed with `pip install .` (which generates the gRPC code and
# compiles the Cython kernel), the same extras as `make install`.
#
#   docker build -t freshrank:latest .                                       # torch as make installs it
#   docker build -t freshrank:latest --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#   docker build -t freshrank:latest --build-arg TORCH_SPEC=torch==2.13.0 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .  # CUDA workers
#
# tests/infra/test_image.py keeps this file in step with the Makefile (torch spec, extras) and
# checks that every command the manifests run exists in the installed package.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# Same default as the Makefile's TORCH_SPEC; an empty index means PyPI.
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=
ARG EXTRAS=dev
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --upgrade pip \
 && pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "${TORCH_SPEC}"
WORKDIR /src
COPY . /src
# Non-editable: setup.py's build_py writes protos/freshrank/v1/*_pb2*.py and cythonize builds
# online_layer/_ftrl into the wheel (.dockerignore keeps any host-built copy out).
RUN pip install ".[${EXTRAS}]"
# Fail the build, not the first pod, if the kernel or the generated code is missing.
RUN cd / && python -c "import online_layer._ftrl, protos.freshrank.v1.ranking_pb2_grpc, serving.app, base_model.train" \
 && freshrank --help > /dev/null

FROM ${PYTHON_IMAGE}
RUN useradd --create-home --uid 1000 ray
COPY --from=build /opt/venv /opt/venv
# infra/serve/config.yaml for `serve deploy` / `serve run`; the code itself is the installed
# package (no source tree on the path, so imports never pick up an unbuilt copy).
COPY --chown=ray:ray infra /app/infra
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER ray
WORKDIR /app
# KubeRay replaces the command with `ray start ...`; the Deployments pass `freshrank ...` as args.
CMD ["freshrank", "--help"]
