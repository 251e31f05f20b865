# syntax=docker/dockerfile:1
# One image for every gputel component; the container command picks the component:
#   walbroker serve ... | gputel-streamer ... | gputel-collector ... | gputel-gateway ...
# tini is PID 1 (exec form, no shell) so SIGTERM reaches the component and zombies are reaped.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto/ proto/
COPY walbroker/ walbroker/
COPY store/ store/
COPY streamer/ streamer/
COPY collector/ collector/
COPY gateway/ gateway/
COPY gputel/ gputel/
# Wheels in wheelhouse/ (made on the host by `make image`: pip there can reach the index) are
# installed offline; an empty wheelhouse installs from the package index as usual.
COPY wheelhouse/ /wheelhouse/
RUN python -m venv /opt/gputel \
    && if ls /wheelhouse/*.whl >/dev/null 2>&1; then \
         /opt/gputel/bin/pip install --no-cache-dir --no-index --find-links /wheelhouse gputel; \
       else \
         /opt/gputel/bin/pip install --no-cache-dir .; \
       fi \
    && find /opt/gputel -name '__pycache__' -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE} AS runtime
ARG TINI_VERSION=0.19.0-1+b3
RUN apt-get update \
    && apt-get install -y --no-install-recommends "tini=${TINI_VERSION}" \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 gputel \
    && useradd --system --uid 10001 --gid gputel --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin gputel
COPY --from=build /opt/gputel /opt/gputel
COPY data/dcgm.csv /data/dcgm.csv
ENV PATH=/opt/gputel/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric user so Kubernetes can verify runAsNonRoot without a name lookup.
USER 10001:10001
WORKDIR /tmp
# 7070 broker gRPC, 8080 gateway, 9101-9103 broker/streamer/collector metrics and health.
EXPOSE 7070 8080 9101 9102 9103
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["walbroker", "--help"]
