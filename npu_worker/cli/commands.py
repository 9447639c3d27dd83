"""Every command, registered on the app in the order `--help` lists them."""

from . import call, devices, info, models, run
from .app import app

app.command("prepare-models")(models.prepare_models)
app.command()(models.export)
app.command()(devices.devices)
app.command()(run.work)
app.command()(run.serve)
app.command()(info.status)
app.command()(info.alive)
app.command()(call.bench)
app.command()(run.up)
app.command()(call.call)
