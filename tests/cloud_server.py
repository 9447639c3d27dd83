"""The fake OpenAI-compatible cloud lives in `scripts/cloud_server.py` (the chaos script uses it too)."""

from scripts.cloud_server import CloudServer, ThreadedServer, create_cloud_app

__all__ = ["CloudServer", "ThreadedServer", "create_cloud_app"]
