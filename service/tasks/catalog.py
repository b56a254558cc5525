"""The catalogue of served models (/v1/models, the task gRPC service's ListModels)."""

from __future__ import annotations

import asyncio
from typing import Any

from service.runners.repository import ServingState
from service.tasks import registry
from service.tasks.base import domain_of


async def list_models(serving: ServingState) -> list[dict[str, Any]]:
    """Every served model version (newest first per model): spec, placement, provider,
    batching; configured models that cannot be served, with why."""
    await asyncio.gather(*(runner.refresh() for runner in serving.all_runners()))
    models = [
        described(serving, name, version)
        for name in serving.versions
        for version in serving.versions[name]
    ]
    missing = [{"name": n, "ready": False, "error": why} for n, why in serving.missing.items()]
    return models + missing


async def show_model(
    serving: ServingState, name: str, version: str | None = None
) -> dict[str, Any]:
    await serving.runner(name, version=version).refresh()
    return described(serving, name, version)


def described(serving: ServingState, name: str, version: str | None) -> dict[str, Any]:
    """The runner's description plus what its task says the model understands, and its domain
    verdict (threshold, which side is outside, method, measured rates) where it has one."""
    found = serving.describe(name, version)
    spec = serving.runner(name, version=version).spec
    task = registry.TASKS.get(spec.task)
    if task is not None and task.understands is not None:
        understood = task.understands(spec)
        if understood is not None:
            found["understands"] = understood
    domain = domain_of(spec)
    if domain is not None:  # what an answer's domain_score is measured against
        found["domain"] = {
            key: domain[key]
            for key in ("threshold", "outside", "method", "score", "chosen_on", "measured")
            if key in domain
        }
        found["domain"].setdefault("outside", "above")
    return found
