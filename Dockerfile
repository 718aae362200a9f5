# drllm: the pipeline in a container. CPU by default; see README "Docker" for GPU hosts.
FROM python:3.11-slim

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    RAY_AUTH_MODE=disabled

WORKDIR /app

# Dependencies first, from the same lock as `make setup`, so code changes reuse this layer.
COPY requirements.lock requirements-nodeps.txt ./
RUN pip install --no-cache-dir pip==26.3 \
    && pip install --no-cache-dir -r requirements.lock \
    && pip install --no-cache-dir --no-deps -r requirements-nodeps.txt

COPY . .
# The image has no git history: DVC runs without an SCM here.
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e . \
    && dvc config --local core.no_scm true

CMD ["dvc", "repro"]
