"""`GET /models`: what can be asked for, and what is loaded where."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from dispatcher.fleet import by_model

from ..auth import RESPONSES, AuthenticatedRoute, require_models
from ..deps import AsyncDispatcherDep, Fleet
from ..schemas import ModelInfo, ModelsResponse

router = APIRouter(route_class=AuthenticatedRoute, tags=["models"], dependencies=[Depends(require_models)],
                   responses=RESPONSES)


@router.get("/models", response_model=ModelsResponse)
async def list_models(dispatcher: AsyncDispatcherDep, fleet: Fleet) -> ModelsResponse:
    states = by_model(await fleet.heartbeats())
    infos = []
    for name in dispatcher.registry.names:
        spec, state = dispatcher.registry.specs[name], states.get(name)
        infos.append(ModelInfo(
            name=name, task=spec.task, dim=spec.dim, max_input_tokens=spec.max_input_tokens,
            loaded=state is not None, workers=state.workers if state else 0,
            devices=sorted(state.devices) if state else [],
            queue_depth={"interactive": state.interactive_depth if state else 0,
                         "bulk": state.bulk_depth if state else 0},
            cloud_fallback=dispatcher.cloud.available_for(spec)))
    return ModelsResponse(available=dispatcher.registry.names, loaded_models=[i.name for i in infos if i.loaded],
                          models=infos)
