# ponder on NVIDIA GPUs, on vLLM's official image (which brings CUDA, torch and vLLM).
#   docker build -t ponder .                      # or --build-arg VLLM_IMAGE=vllm/vllm-openai:<tag>
#   docker run --gpus all -p 8000:8000 ponder     # serves the baked-in ponder-tiny
#   docker run --gpus all -p 8000:8000 -v /models:/models -e PONDER_MODEL=/models/my-model ponder
# Every `ponder serve` flag is also an env var: --max-n -> PONDER_MAX_N, --api-key -> PONDER_API_KEY, ...
ARG VLLM_IMAGE=vllm/vllm-openai:latest
FROM ${VLLM_IMAGE}

WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
COPY strategies ./strategies
COPY tasks ./tasks
COPY trainers ./trainers
COPY nas ./nas
COPY clients ./clients
# vLLM and torch come from the base image; install ponder and its light dependencies beside them.
RUN pip install --no-cache-dir -e . \
    && useradd --create-home --uid 1000 ponder
COPY --chown=ponder models ./models

USER ponder
ENV PONDER_HOST=0.0.0.0 \
    PONDER_PORT=8000 \
    PONDER_MODEL=/app/models/ponder-tiny,/app/models/ponder-tiny-pos,/app/models/ponder-tiny-neg
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PONDER_PORT', '8000'), timeout=4)"
ENTRYPOINT ["ponder", "serve"]
