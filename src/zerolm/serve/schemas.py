"""Request and response bodies of the HTTP API (they make the OpenAPI schema at /docs).

Every POST takes `{"model": NAME, "input": TEXT or [TEXTS]}` plus its own options, as
OpenAI's embeddings API does; `model` may be left out when one model is served. Unknown
fields are refused (422 naming the field), so a typo never passes silently.
"""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

Texts = str | list[str]
Item = TypeVar("Item")  # the result of one input


class TextsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="a served model's name (optional when one is served)")
    input: Texts = Field(..., description="a text, or a list of texts answered in order")

    @field_validator("input")
    @classmethod
    def _not_empty(cls, v: Texts) -> Texts:
        if isinstance(v, str):
            _check_text(v, "the text")
            return v
        if not v:
            raise ValueError("the list holds no text")
        for i, t in enumerate(v):
            _check_text(t, f"text {i} of the list")
        return v


def _check_text(text: str, what: str) -> None:
    if not text.strip():
        raise ValueError(f"{what} is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate ("\ud800"): JSON allows it, UTF-8 does not
        raise ValueError(f"{what} holds {text[e.start]!r} at character {e.start}, which is not a "
                         "character (a lone UTF-16 surrogate)") from None


class ClassifyRequest(TextsRequest):
    pass


class TagRequest(TextsRequest):
    pass


class IntentSlotsRequest(TextsRequest):
    pass


class AssistRequest(TextsRequest):
    pass


class GenerateRequest(TextsRequest):
    """A causal LM continues each input with these settings (their defaults where the
    request is silent); an encoder-decoder writes a target for each input, decoding as it
    was fine-tuned (greedy or its beams, its target length) where the request is silent."""

    max_new_tokens: int = Field(32, description="tokens to generate at most")
    temperature: float = Field(1.0, description="0: greedy; < 1 sharpens, > 1 flattens")
    top_k: int = Field(0, description="keep the k most likely tokens (0: all)")
    top_p: float = Field(1.0, description="nucleus: keep this much probability (1: all)")
    repetition_penalty: float = Field(1.0, description="> 1 discourages repeated tokens")
    greedy: bool = Field(False, description="always take the most likely token")
    stop: str | list[str] = Field(default_factory=list, description="stop a text at any of these")
    seed: int | None = Field(None, description="seed for sampling (the same seed, the same text)")
    num_beams: int = Field(1, description="encoder-decoders: beam search with this many beams (1: none)")
    length_penalty: float = Field(1.0, description="beam search: > 0 favours longer texts, < 0 shorter")
    no_repeat_ngram_size: int = Field(0, description="never repeat an n-gram of this size (0: off)")
    min_new_tokens: int = Field(0, description="no end-of-text before this many tokens")
    stream: bool = Field(False, description="send the text token by token as server-sent events")


class EmbeddingsRequest(TextsRequest):
    encoding_format: Literal["float", "base64"] = Field("float", description="float list or base64 float32")
    dimensions: int | None = Field(None, description="must equal the model's width when given")
    user: str | None = Field(None, description="accepted and ignored (OpenAI clients send it)")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int | None = None


class ClassifyResult(BaseModel):
    index: int
    label: str
    score: float
    probs: dict[str, float]
    truncated: bool
    # an intent classifier with out-of-scope detection also says:
    in_scope: bool | None = None
    oos_score: float | None = Field(None, description="higher: more likely out of scope")
    top_label: str | None = Field(None, description="the best in-scope class, whatever the decision")
    top_score: float | None = None


class Entity(BaseModel):
    type: str
    text: str
    start: int = Field(..., description="character offset of the first character")
    end: int = Field(..., description="character offset after the last character")
    words: list[int] = Field(..., description="first and last word index")


class TagResult(BaseModel):
    index: int
    tokens: list[str]
    tags: list[str]
    entities: list[Entity]
    truncated: bool


class IntentSlotsResult(BaseModel):
    index: int
    intent: str
    intent_score: float
    intent_probs: dict[str, float] = Field(..., description="the most likely intents")
    tokens: list[str]
    tags: list[str]
    slots: list[Entity]
    truncated: bool


class FaqAnswer(BaseModel):
    question: str | None
    answer: str | None
    intent: str | None
    score: float


class AssistResult(BaseModel):
    index: int
    text: str
    in_scope: bool
    oos_score: float | None
    intent: str
    intent_score: float
    slots: list[Entity]
    faq: FaqAnswer | None
    reply: str


class GenerateResult(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    tokens: int
    truncated: bool | None = None  # an encoder-decoder's source cut to its limit (causal LMs: absent)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class ListResponse(BaseModel, Generic[Item]):
    """Every POST answer: one result per input text, in order (OpenAI's list shape)."""

    object: Literal["list"] = "list"
    model: str
    data: list[Item]
    usage: Usage


ClassifyResponse = ListResponse[ClassifyResult]
TagResponse = ListResponse[TagResult]
IntentSlotsResponse = ListResponse[IntentSlotsResult]
AssistResponse = ListResponse[AssistResult]
GenerateResponse = ListResponse[GenerateResult]
EmbeddingsResponse = ListResponse[Embedding]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str
    kind: Literal["classify", "tag", "intent_slots", "generate", "embed"]
    routes: list[str]
    max_length: int
    family: str
    labels: list[str] | None = None
    decoding: dict[str, int | float | bool] | None = Field(
        None, description="an encoder-decoder: how it decodes where a request is silent")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    assistant: dict[str, str | None] | None = Field(None, description="what /v1/assist chains, when it is on")


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: int
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
