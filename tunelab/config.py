"""Settings shared by every tunelab command, read from the environment (`TUNELAB_*`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNELAB_")

    home: Path = Field(default=Path("~/.tunelab"), description="Where models, runs and state live.")
    default_model: str = Field(default="SmolLM2-135M-Instruct", description="Base model used when none is named.")

    @property
    def models_dir(self) -> Path:
        return self.home.expanduser() / "models"

    @property
    def runs_dir(self) -> Path:
        return self.home.expanduser() / "runs"


def get_settings() -> Settings:
    """Read the settings now, so a changed environment (tests, `TUNELAB_HOME=... tunelab`) is honoured."""
    return Settings()
