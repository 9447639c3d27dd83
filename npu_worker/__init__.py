"""Process management for npu-worker: the CLI and the embedded Redis."""
