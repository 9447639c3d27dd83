"""Dependencies routes declare: the dispatcher, the fleet service and the settings of this app."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from dispatcher import fleet
from dispatcher.client import AsyncDispatcher
from dispatcher.settings import FacadeSettings


# `async def`, though they do not await: FastAPI runs a plain `def` dependency in its thread pool, a
# thread hand-off per request on the hot path for a lookup of an attribute.
async def get_async_dispatcher(request: Request) -> AsyncDispatcher:
    return request.app.state.dispatcher


async def get_fleet(request: Request) -> fleet.Fleet:
    return request.app.state.fleet


async def get_facade_settings(request: Request) -> FacadeSettings:
    return request.app.state.settings


AsyncDispatcherDep = Annotated[AsyncDispatcher, Depends(get_async_dispatcher)]
Fleet = Annotated[fleet.Fleet, Depends(get_fleet)]
SettingsDep = Annotated[FacadeSettings, Depends(get_facade_settings)]
