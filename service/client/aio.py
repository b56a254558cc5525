"""The asyncio client: the same calls as Client, awaited."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TypeVar, Unpack, overload

import httpx

from service.client.base import DEFAULT_URL, Call, CallOptions, ClientBase, Media
from service.client.errors import Unavailable
from service.client.results import (
    Caption,
    Classification,
    Explanation,
    ModelInfo,
    Sentiment,
    Transcript,
)
from service.client.retries import DEFAULT_RETRY, Retry

T = TypeVar("T")


class AsyncClient(ClientBase):
    """deepserve's REST task API (/v1) for asyncio: Client's methods, awaited. Close it with
    `await client.aclose()` (or use `async with`) to free its connections."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float | None = 60.0,
        deadline: float | None = None,
        retry: Retry = DEFAULT_RETRY,
        reject_out_of_domain: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            timeout=timeout,
            deadline=deadline,
            retry=retry,
            reject_out_of_domain=reject_out_of_domain,
        )
        self.http = httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, transport=transport
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def send(
        self, call: Call[T], timeout: float | None = None, deadline: float | None = None
    ) -> T:
        """Send `call`, again after a 503 or a failed connection while its retry allows."""
        attempts = self.attempts(call, timeout, deadline)
        wait: float | None
        while True:
            headers, limit = attempts.next()
            try:
                # httpx's timeout bounds each network operation; this bounds the whole attempt
                # (a peer that trickles its answer byte by byte cannot stretch it)
                async with asyncio.timeout(limit):
                    response = await self.http.request(
                        call.method,
                        call.path,
                        params=call.params,
                        content=call.content,
                        headers={**call.headers, **headers},
                        timeout=limit,
                    )
            except TimeoutError:
                wait = attempts.after_failure(httpx.ReadTimeout(f"no answer within {limit} s"))
            except httpx.TransportError as failure:
                wait = attempts.after_failure(failure)
            else:
                wait = attempts.after_answer(response)
                if wait is None:
                    return call.result(response)
            await self.sleep(wait)

    sleep = staticmethod(asyncio.sleep)

    # --- the API -------------------------------------------------------------------------------

    async def classify(
        self,
        image: Media,
        model: str | None = None,
        *,
        top_k: int | None = None,
        version: str | None = None,
        reject_out_of_domain: bool | None = None,
        **options: Unpack[CallOptions],
    ) -> Classification:
        """Top-k labels of an image (PNG, JPEG, ...): its bytes, a path or an open file."""
        call = self.classify_call(image, model, top_k, version, reject_out_of_domain)
        return await self.send(call, **options)

    async def explain(
        self,
        image: Media,
        model: str | None = None,
        *,
        grid: int | None = None,
        target: int | None = None,
        version: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Explanation:
        """The occlusion-sensitivity map of an image classifier's answer."""
        return await self.send(self.explain_call(image, model, grid, target, version), **options)

    async def explain_png(
        self,
        image: Media,
        model: str | None = None,
        *,
        grid: int | None = None,
        target: int | None = None,
        version: str | None = None,
        size: int = 256,
        **options: Unpack[CallOptions],
    ) -> bytes:
        """The map drawn over the model's input: a PNG of `size` pixels on its longer side."""
        return await self.send(
            self.explain_call(image, model, grid, target, version, size), **options
        )

    @overload
    async def sentiment(
        self,
        text: str,
        model: str | None = None,
        *,
        version: str | None = None,
        reject_out_of_domain: bool | None = None,
        **options: Unpack[CallOptions],
    ) -> Sentiment: ...

    @overload
    async def sentiment(
        self,
        text: list[str],
        model: str | None = None,
        *,
        version: str | None = None,
        reject_out_of_domain: bool | None = None,
        **options: Unpack[CallOptions],
    ) -> list[Sentiment]: ...

    async def sentiment(
        self,
        text: str | list[str],
        model: str | None = None,
        *,
        version: str | None = None,
        reject_out_of_domain: bool | None = None,
        **options: Unpack[CallOptions],
    ) -> Sentiment | list[Sentiment]:
        """The sentiment of a text, or of each text of a list (one request, in order)."""
        call = self.sentiment_call(text, model, version, reject_out_of_domain)
        return await self.send(call, **options)

    async def transcribe(
        self,
        audio: Media,
        model: str | None = None,
        *,
        version: str | None = None,
        reject_out_of_domain: bool | None = None,
        **options: Unpack[CallOptions],
    ) -> Transcript:
        """The transcript of a WAV recording (long ones are split at silences)."""
        call = self.transcribe_call(audio, model, version, reject_out_of_domain)
        return await self.send(call, **options)

    async def caption(
        self,
        image: Media,
        model: str | None = None,
        *,
        beam: int | None = None,
        version: str | None = None,
        reject_out_of_domain: bool | None = None,
        **options: Unpack[CallOptions],
    ) -> Caption:
        """A caption of an image; beam=1 greedy, 2..8 beam search."""
        call = self.caption_call(image, model, beam, version, reject_out_of_domain)
        return await self.send(call, **options)

    async def models(self, **options: Unpack[CallOptions]) -> list[ModelInfo]:
        """Every configured model version."""
        return await self.send(self.models_call(), **options)

    async def model(
        self, name: str, version: str | None = None, **options: Unpack[CallOptions]
    ) -> ModelInfo:
        """One model (NotFound when the server has none of that name)."""
        return await self.send(self.model_call(name, version), **options)

    async def live(self, **options: Unpack[CallOptions]) -> bool:
        """Whether the server answers /livez."""
        try:
            return await self.send(self.probe_call("/livez"), **options)
        except Unavailable:
            return False

    async def ready(self, **options: Unpack[CallOptions]) -> bool:
        """Whether every model is loaded and warm (/readyz)."""
        try:
            return await self.send(self.probe_call("/readyz"), **options)
        except Unavailable:
            return False
