# captioner: one container per GPU node.
#   docker build -t captioner .
#   docker run --gpus all -p 8000:8000 -v $PWD/weights:/app/weights \
#     -e CAPTIONER_AUTH__API_KEYS='["sha256:<hex of your key>"]' captioner
# The container listens on 0.0.0.0, so it refuses to start without API keys (or CAPTIONER_AUTH__ALLOW_ANONYMOUS=true,
# on purpose, behind something else that authenticates).
# Weights come from the mounted /app/weights volume (downloaded there on first start if empty), or are baked
# into the image with:  docker build --build-arg DOWNLOAD_WEIGHTS=1 -t captioner .
# Plain Python 3.11 (requirements.lock's): torch and torchvision come from requirements-torch.txt, the one pin the
# Makefile's tests install too (PyPI's wheels carry their CUDA libraries; the host needs only the NVIDIA driver).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/app/.cache/huggingface

WORKDIR /app
COPY pyproject.toml README.md requirements.lock requirements-torch.txt ./
# torch and torchvision at the versions the tests run (requirements-torch.txt); then the rest (transformers,
# starlette, uvicorn, uvloop, httptools, ...) at the exact versions of requirements.lock, each checked against its hash.
RUN pip install -r requirements-torch.txt
RUN pip install --require-hashes -r requirements.lock
COPY captioner ./captioner
RUN pip install --no-deps ".[fast]"
COPY config.yaml ./

ARG DOWNLOAD_WEIGHTS=0
RUN if [ "$DOWNLOAD_WEIGHTS" = "1" ]; then \
      python -c "from captioner.config import load_settings; from captioner.model.weights import ensure_weights; ensure_weights(load_settings('config.yaml').model)"; \
    fi

RUN useradd --create-home --uid 10001 captioner && mkdir -p /app/weights /app/.cache && chown -R captioner /app
USER captioner
VOLUME ["/app/weights"]

EXPOSE 8000
# Ready only once the model is loaded and warmed up; a first start may download the weights, hence the grace.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"
STOPSIGNAL SIGTERM
# 0.0.0.0: reachable from outside the container, hence keys required (config.yaml's own default is loopback).
CMD ["captioner", "serve", "--host", "0.0.0.0"]
