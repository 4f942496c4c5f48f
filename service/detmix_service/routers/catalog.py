"""What the server offers: named recipes and datasets."""

from __future__ import annotations

from fastapi import APIRouter

from detmix.recipes import Recipe
from detmix_service.deps import ApiKeyChecked, RuntimeDep
from detmix_service.schemas import DatasetInfo, ErrorResponse

router = APIRouter(prefix="/v1", tags=["catalog"], dependencies=[ApiKeyChecked],
                   responses={401: {"model": ErrorResponse, "description": "API key missing or wrong"}})


@router.get("/recipes", summary="The named recipes (detmix's own and $DETMIX_RECIPES_DIR's)")
async def recipes(runtime: RuntimeDep) -> list[Recipe]:
    return list(runtime.recipes.values())


@router.get("/datasets", summary="The datasets batches can be drawn from")
async def datasets(runtime: RuntimeDep) -> list[DatasetInfo]:
    return [dataset.info() for dataset in runtime.datasets.values()]
