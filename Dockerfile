# drllm: the pipeline in a container. `docker run` runs `dvc repro` on the embedded default (CPU).
# PyPI's torch is the CUDA build, so the same image also runs on GPU hosts (`docker run --gpus all`).
# For a smaller CPU-only image: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
FROM python:3.11-slim

ARG TORCH_INDEX_URL=""
# A virtual environment, as `make setup` uses: it also works where the base's Python is externally managed.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    RAY_AUTH_MODE=disabled \
    GX_ANALYTICS_ENABLED=False

WORKDIR /app

# Dependencies first, from the same lock as `make setup`, so code changes reuse this layer.
COPY requirements.lock requirements-nodeps.txt ./
RUN pip install --no-cache-dir pip==26.3 \
    && if [ -n "$TORCH_INDEX_URL" ]; then \
         pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "$(grep '^torch==' requirements.lock)"; \
       fi \
    && pip install --no-cache-dir -r requirements.lock \
    && pip install --no-cache-dir --no-deps -r requirements-nodeps.txt

COPY . .
# The image has no git history: DVC runs without an SCM here.
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e . \
    && dvc config --local core.no_scm true

CMD ["dvc", "repro"]
