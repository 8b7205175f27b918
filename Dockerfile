# The one image every Kubeflow component and Ray worker runs in.
# Package versions come only from pyproject.toml (tests/test_packaging.py checks that none are repeated here).
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    RAY_USAGE_STATS_ENABLED=0

WORKDIR /opt/idap
COPY pyproject.toml README.md ./

# Dependencies in their own layer (torch alone is gigabytes): a code change rebuilds only the last layers.
# Empty package stubs let pip resolve the project's pinned dependencies before the sources are copied.
RUN mkdir idap components pipelines \
    && touch idap/__init__.py components/__init__.py pipelines/__init__.py \
    && pip install --no-cache-dir . \
    && pip uninstall --yes idap \
    && rm -rf idap components pipelines

COPY idap/ idap/
COPY components/ components/
COPY pipelines/ pipelines/
RUN pip install --no-cache-dir --no-deps . \
    && useradd --no-log-init --uid 10001 --user-group --create-home --shell /usr/sbin/nologin idap

# Numeric uid so that Kubernetes can verify runAsNonRoot without resolving names.
USER 10001
WORKDIR /home/idap
CMD ["idap", "--help"]
