"""Process management for npu-worker: the CLI (`cli/`), the worker supervisor, the embedded stack and its
Redis, the status renderers and `call`'s signed HTTP client."""
