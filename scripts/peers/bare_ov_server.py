"""A bare single-process OpenVINO embedding server with no queue: the benchmark's "no broker" peer.

One TextEmbeddingPipeline, called from the request handler (under a lock: one synchronous pipeline,
as in the worker), same model directory, same JSON answer shape as the facade's /embeddings.
Run: python scripts/peers/bare_ov_server.py MODEL_DIR PORT
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import openvino_genai as og
import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response


def create_app(model_dir: str) -> FastAPI:
    config = og.TextEmbeddingPipeline.Config()
    config.pooling_type = og.TextEmbeddingPipeline.PoolingType.MEAN
    config.normalize = True
    config.max_length = 256
    pipeline = og.TextEmbeddingPipeline(model_dir, "CPU", config, PERFORMANCE_HINT="LATENCY")
    lock = threading.Lock()
    app = FastAPI()

    @app.post("/embeddings")
    def embeddings(request_body: dict) -> Response:  # sync: FastAPI runs it in its thread pool
        with lock:
            vectors = np.asarray(pipeline.embed_documents(request_body["texts"]), dtype=np.float32)
        return Response(orjson.dumps({"embeddings": vectors}, option=orjson.OPT_SERIALIZE_NUMPY),
                        media_type="application/json")

    @app.get("/health")
    def health(_: Request) -> dict:
        return {"status": "healthy"}

    return app


if __name__ == "__main__":
    uvicorn.run(create_app(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
                access_log=False)
