"""The catalogue of served models (/v1/models, the task gRPC service's ListModels)."""

from __future__ import annotations

import asyncio
from typing import Any

from service.runners.repository import ServingState


async def list_models(serving: ServingState) -> list[dict[str, Any]]:
    """Every served model version (newest first per model): spec, placement, provider,
    batching; configured models that cannot be served, with why."""
    await asyncio.gather(*(runner.refresh() for runner in serving.all_runners()))
    models = [
        serving.describe(name, version)
        for name in serving.versions
        for version in serving.versions[name]
    ]
    missing = [{"name": n, "ready": False, "error": why} for n, why in serving.missing.items()]
    return models + missing


async def show_model(
    serving: ServingState, name: str, version: str | None = None
) -> dict[str, Any]:
    await serving.runner(name, version=version).refresh()
    return serving.describe(name, version)
