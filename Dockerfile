# vnfio: one image for the device plugin (`vnfio-device-plugin`), the CNI node daemon (`vnfio-cni-daemon`) and the
# self-contained CNI executable that the CNI DaemonSet's init container installs on the host (/opt/vnfio/vnfio).
#
#   git archive HEAD | docker build -t REGISTRY/vnfio:0.1.0 -     (a clean context: no .venv, no caches)
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/vnfio:0.1.0 --push .
#
# The default user is unprivileged. The manifests override it where the job needs root: the device plugin runs as
# uid 0 with every capability dropped (kubelet's socket dir and kubelet.sock are root-owned); the CNI DaemonSet runs
# as root, its init container with SYS_CHROOT only (it writes the host's /opt/cni/bin and checks the executable
# with the host's python3), its daemon with NET_ADMIN and SYS_ADMIN (links in the host's and the pods' network
# namespaces): see manifests/base/.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# The interpreter the CNI executable names in its #! line: the nodes' own python3 (>= 3.11 for the in-process
# fallback). If yours lives elsewhere, build with --build-arg HOST_PYTHON=... and set VNFIO_HOST_PYTHON in
# manifests/base/cni.yaml to the same path.
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
 && /opt/vnfio/venv/bin/pip install --no-cache-dir --no-deps /wheels/vnfio-*.whl \
 && /opt/vnfio/venv/bin/python -m cni.bundle --python "${HOST_PYTHON}" /opt/vnfio/vnfio \
 && /opt/vnfio/venv/bin/python -m pip uninstall --yes pip

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="vnfio" \
      org.opencontainers.image.description="Kubernetes I/O for network functions: VFIO/DPAA2 device plugin and the vnfio CNI plugin" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.vnfio.cni-executable="/opt/vnfio/vnfio"
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
