"""Dependencies routes declare: the dispatcher and the settings of this app."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from dispatcher.client import AsyncDispatcher


def get_dispatcher(request: Request) -> AsyncDispatcher:
    return request.app.state.dispatcher


Dispatcher = Annotated[AsyncDispatcher, Depends(get_dispatcher)]
