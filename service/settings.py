"""Settings from the environment (DEEPSERVE_ prefix); every field says what it controls."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEEPSERVE_")

    store: Path = PROJECT_ROOT / "model_store"
    """BentoML home holding the model store (BENTOML_HOME); models live under its models/ folder."""

    def apply_store(self) -> None:
        """Point BentoML at our store. Call before bentoml is first used in this process."""
        os.environ.setdefault("BENTOML_HOME", str(self.store))
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
