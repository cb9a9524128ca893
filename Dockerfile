# vnfio: one image for the device plugin (`vnfio-device-plugin`), the CNI node daemon (`vnfio-cni-daemon`) and the
# CNI executables that the CNI DaemonSet's init container installs on the host (/opt/vnfio/cni-bin: the static
# vnfio for amd64 and arm64, cross-built with Zig's C compiler, and vnfio-inproc, the Python fallback).
#
#   git archive HEAD | docker build -t REGISTRY/vnfio:0.1.0 -     (a clean context: no .venv, no caches)
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/vnfio:0.1.0 --push .
#
# The default user is unprivileged. The manifests override it where the job needs root: the device plugin runs as
# uid 0 with every capability dropped (kubelet's socket dir and kubelet.sock are root-owned); the CNI DaemonSet runs
# as root, its init container with no capability at all (it writes the host's /opt/cni/bin, mounted alone), its
# daemon with NET_ADMIN and SYS_ADMIN (links in the host's and the pods' network namespaces): see manifests/base/.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# The interpreter the Python fallback vnfio-inproc names in its #! line: the nodes' own python3 (>= 3.11). If yours
# lives elsewhere, build with --build-arg HOST_PYTHON=...; a node without it simply has no fallback.
ARG HOST_PYTHON=/usr/bin/python3

FROM ${PYTHON_IMAGE} AS builder
ARG HOST_PYTHON
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/vnfio/venv
# Dependencies first, from the pinned list, so a source change does not reinstall them.
COPY hack/requirements.lock hack/requirements.lock
RUN /opt/vnfio/venv/bin/pip install --no-cache-dir --require-hashes -r hack/requirements.lock
COPY pyproject.toml README.md ./
COPY deviceplugin deviceplugin
COPY cni cni
# The wheel carries no dependencies of its own: they came from the lock above.
RUN /opt/vnfio/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && /opt/vnfio/venv/bin/pip install --no-cache-dir --no-deps /wheels/vnfio-*.whl
# The node executables: `make cni-bin` cross-builds the static vnfio for both architectures with Zig's C compiler
# (the ziglang wheel) and bundles vnfio-inproc; both compilers' outputs go into every image, the installer picks.
ARG MAKE_VERSION=4.3-4.1
ARG ZIGLANG_VERSION=0.17.1
RUN apt-get update \
 && apt-get install -y --no-install-recommends "make=${MAKE_VERSION}" \
 && rm -rf /var/lib/apt/lists/*
COPY Makefile Makefile
RUN /opt/vnfio/venv/bin/pip install --no-cache-dir "ziglang==${ZIGLANG_VERSION}" \
 && make cni-bin CNI_PY=/opt/vnfio/venv/bin/python CNI_DEPS= HOST_PYTHON="${HOST_PYTHON}" \
 && cp -r build/cni-bin /opt/vnfio/cni-bin \
 && /opt/vnfio/venv/bin/python -m pip uninstall --yes ziglang pip

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="vnfio" \
      org.opencontainers.image.description="Kubernetes I/O for network functions: VFIO/DPAA2 device plugin and the vnfio CNI plugin" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.vnfio.cni-executables="/opt/vnfio/cni-bin"
# nft: the CNI node daemon applies ipMasq and macspoofchk rules with it (the host's own nft serves the in-process
# path). Pinned to bookworm's current build; after a Debian point release, pass --build-arg NFTABLES_VERSION=...
# (`apt-cache policy nftables` in the base image tells the new one).
ARG NFTABLES_VERSION=1.0.6-2+deb12u2
RUN apt-get update \
 && apt-get install -y --no-install-recommends "nftables=${NFTABLES_VERSION}" \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 65532 vnfio \
 && useradd --system --uid 65532 --gid vnfio --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin vnfio
COPY --from=builder /opt/vnfio /opt/vnfio
ENV PATH="/opt/vnfio/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["vnfio-device-plugin"]
