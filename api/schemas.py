"""Request and response bodies of the facade: the one source of each HTTP contract."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from dispatcher.protocol import Placement


def _json_integer(value: Any) -> Any:
    """JSON Schema's integer: 2 and 2.0 are, "2" and true are not (strict pydantic refuses 2.0, lax takes "2")."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]


Deadline = Annotated[float | None, Field(
    None, ge=0.5, le=3600, description="This request's time budget in seconds (default NPU_DEADLINE_S): the wait "
    "for a worker (for a generation: until it starts), a retry and the cloud fallback all fit in it.")]


class Timings(BaseModel):
    total_ms: float
    queue_ms: float | None = None
    inference_ms: float | None = None
    ttft_ms: float | None = None


class Usage(BaseModel):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # 0 is not false, "5" is not 5: as the schema says
    texts: list[str] = Field(description="Texts to embed, in order (limits: NPU_MAX_TEXTS, NPU_MAX_TEXT_CHARS).")
    model: str | None = Field(None, description="Embedding model; the first registered one when absent.")
    truncate: bool = Field(False, description="Cut inputs longer than the model's token limit instead of "
                           "refusing them; `truncated` says which were cut.")
    allow_cloud: bool = Field(True, description="False keeps the data on premises: no cloud fallback.")
    deadline_s: Deadline = None


class EmbeddingsResponse(BaseModel):
    embeddings: list[list[float]]
    model: str
    dim: int
    source: Literal["npu", "cloud"]
    device: str | None
    node_id: str | None
    token_counts: list[int] | None
    truncated: list[bool] | None
    usage: Usage
    fallback_reason: str | None
    timings: Timings


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # 0 is not false, "5" is not 5: as the schema says
    prompt: str = Field(description="User message; the model's chat template is applied.")
    model: str | None = Field(None, description="Generation model; the first registered one when absent.")
    max_tokens: JsonInt | None = Field(None, description="Most new tokens (default 256, limit NPU_MAX_NEW_TOKENS).")
    temperature: float | None = Field(None, description="Below 0.01 or absent: greedy; up to 2.")
    allow_cloud: bool = True
    deadline_s: Deadline = None
    stop: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, max_length=4, description="Up to 4 strings; the text ends before the first of them.")
    stream: bool = Field(False, description="Answer as server-sent events: `{\"delta\": ...}` as text is "
                         "generated, then `{\"done\": true, ...}` with the whole response.")


class InferenceResponse(BaseModel):
    text: str
    model: str
    source: Literal["npu", "cloud"]
    device: str | None
    node_id: str | None
    usage: Usage
    finish_reason: str | None
    fallback_reason: str | None
    timings: Timings


class ModelInfo(BaseModel):
    name: str
    task: Literal["embedding", "generation"]
    dim: int | None
    max_input_tokens: int
    loaded: bool
    workers: int
    devices: list[str]
    queue_depth: dict[str, int]
    cloud_fallback: bool


class ModelsResponse(BaseModel):
    available: list[str]
    loaded_models: list[str]
    models: list[ModelInfo]


class HealthResponse(BaseModel):
    status: Literal["healthy", "degraded", "unhealthy"]
    redis: Literal["ok", "unreachable"]
    workers: int
    max_concurrent: int
    memory_gb: float
    utilization: float = Field(description="0-100: (queued + running) / max_concurrent over live workers.")
    device_type: str | None
    loaded_models: list[str]
    missing_models: list[str]
    queue_depth: int
    cloud_fallback: bool
    placements: dict[str, Placement] = Field(default_factory=dict, description="Loaded model -> the device it "
                                             "runs on, its engine, and why earlier devices of the chain refused it.")


class ErrorResponse(BaseModel):
    error: str
    message: str


class OpenAIError(BaseModel):
    message: str
    type: str
    code: str
    param: str | None = None


class OpenAIErrorResponse(BaseModel):
    """Errors on the `/v1` routes, in the shape OpenAI's clients parse."""

    error: OpenAIError
