"""The OpenVINO side: devices, pipelines, model preparation, and the worker process."""
