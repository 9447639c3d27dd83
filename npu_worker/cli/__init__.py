"""`npu-worker`: start everything (`up`), or one part (`serve`, `work`), prepare models, look at the fleet
(`status`, `alive`), or make a signed request to the facade (`call`). One module per group of commands."""

from . import commands  # noqa: F401  (registers every command on `app`)
from .app import app, main

__all__ = ["app", "main"]
