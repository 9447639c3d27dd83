"""The HTTP facade: FastAPI routers over the dispatcher."""
