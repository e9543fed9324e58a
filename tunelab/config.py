"""Settings shared by every tunelab command and the service, read from the environment (`TUNELAB_*`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNELAB_")

    home: Path = Field(default=Path("~/.tunelab"), description="Where models, runs and state live.")
    default_model: str = Field(default="SmolLM2-135M-Instruct", description="Base model used when none is named.")

    # The service (`tunelab serve`) and its clients.
    host: str = Field(default="127.0.0.1", description="Address `tunelab serve` binds to.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port `tunelab serve` listens on.")
    api_key: str | None = Field(default=None, description="An API key the service accepts, and the key the CLI "
                                "sends.")
    base_url: str = Field(default="http://127.0.0.1:8000", description="Where the CLI's client commands find "
                          "the service.")
    max_file_bytes: int = Field(default=512 * 1024 * 1024, ge=1, description="Largest file `POST /v1/files` "
                                "accepts, in bytes.")
    max_running_jobs: int = Field(default=1, ge=1, description="Fine-tuning jobs trained at the same time.")
    lease_seconds: float = Field(default=30.0, gt=0, description="How long a job stays claimed without a "
                                 "heartbeat before another worker takes it over.")
    max_attempts: int = Field(default=3, ge=1, description="Times a job is started after its worker died before "
                              "it fails.")
    checkpoint_every_steps: int = Field(default=0, ge=0, description="A training checkpoint every this many steps, "
                                        "besides the one at the end of each epoch; 0: none.")
    checkpoint_every_minutes: float = Field(default=10.0, ge=0, description="A training checkpoint once this many "
                                            "minutes have passed since the last one, so a long epoch is never lost "
                                            "whole; 0: none.")
    trainer_memory_limit_mb: int = Field(default=0, ge=0, description="Address space a job's training process may "
                                         "use, in MiB (RLIMIT_AS); a run that needs more fails with "
                                         "`out_of_memory` instead of pushing the machine into swap. 0: no limit.")
    decode_weights: Literal["auto", "int4", "int8", "fp32"] = Field(
        default="auto", description="Weights the server decodes with on the CPU: int4 (exactly the 4-bit weights "
        "of a model converted from a 4-bit GGUF, int8 for the rest), int8 rows (4x fewer bytes than fp32), fp32, or "
        "auto (int4 on x86 CPUs with AVX2 or AVX-512, where PyTorch vectorises those kernels, else fp32).")
    kernels: Literal["auto", "off"] = Field(
        default="auto", description="tunelab's own AMX kernels for batched decode steps and prompts: auto "
        "(on CPUs with AMX, where tunelab's install built them) or off (PyTorch's kernels only).")
    prompt_cache_mb: int = Field(default=256, ge=0, description="Memory for the keys and values of recent "
                                 "prompts, per base model, so that a request starting like an earlier one (the same "
                                 "system message, the earlier turns of a chat) skips that part of its prompt "
                                 "processing; 0 turns it off.")
    train_precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="Matrix products of the frozen base weights in LoRA training: bf16 (fp32 for "
        "everything that trains), fp32, or auto (bf16 on CPUs with AMX or AVX512-BF16, else fp32).")
    auto_compare: bool = Field(default=True, description="When a job with a validation file succeeds, compare "
                               "the fine-tuned model with the model it started from on that file.")
    owner: str = Field(default="local", pattern=r"^[A-Za-z0-9_-]{1,40}$", description="The owner named in "
                       "fine-tuned model ids (ft:<base>:<owner>:<suffix>:<id>).")
    checks: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Answer checks every comparison of the service runs besides the "
        "registered ones, comma-separated: module:name (an importable module) or path/to/file.py:name.")
    content_filter_outage: Literal["fail_closed", "annotate"] = Field(
        default="fail_closed", description="When a deployment's content filter cannot judge (its encoder missing or "
        "failing): fail_closed answers 503 content_filter_error; annotate answers unfiltered and says so in "
        "content_filter_results.error, as Azure does.")

    llama_server: Path | None = Field(default=None, description="The llama-server binary deployments on the "
                                      "llama.cpp engine run; unset: the one beside this Python, else on the PATH.")
    vllm_command: str = Field(default="vllm", description="The command that runs vLLM for deployments on the vllm "
                              "engine (`<command> serve MODEL ...`).")
    engine_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Engine URLs a deployment may name (properties.engine.url), "
        "comma-separated: only engines the operator listed, so no API request can point the service elsewhere.")
    engine_start_timeout: float = Field(default=300.0, gt=0, description="Seconds an engine server (llama.cpp, "
                                        "vLLM) may take to answer its health check after it starts.")

    @field_validator("checks", "engine_urls", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value

    @property
    def models_dir(self) -> Path:
        return self.home.expanduser() / "models"

    @property
    def runs_dir(self) -> Path:
        return self.home.expanduser() / "runs"

    @property
    def state_dir(self) -> Path:
        """The service's state: the SQLite database, uploaded files, job runs."""
        return self.home.expanduser() / "state"


def get_settings() -> Settings:
    """Read the settings now, so a changed environment (tests, `TUNELAB_HOME=... tunelab`) is honoured."""
    return Settings()
