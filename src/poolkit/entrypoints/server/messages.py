"""Chat-style ``messages`` on ``/v1/embeddings`` (vLLM's extension) for image-text models: conversations → prompts.

Each conversation holds one text or one image (an ``image_url`` part): two-tower
models (CLIP, SigLIP) embed one or the other. Images are fetched on the event
loop (data URIs, http(s) with the server's timeout, byte and pixel limits, local
files under ``--allowed-local-media-path``; :mod:`poolkit.media`), all of a
request's at once, before the request is admitted to the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ...inputs import ImagePrompt, Prompt
from ...media import MediaError, aload_image_url
from .context import ServerContext, check_unicode
from .errors import APIError
from .protocol import ChatImagePart, ChatMessage, ChatTextPart

Conversations = Sequence[ChatMessage] | Sequence[Sequence[ChatMessage]]
# Images of one request fetched and decoded at once: bounds a request's memory to this many images in flight.
IMAGES_AT_ONCE = 8


def split_conversations(messages: Conversations) -> list[Sequence[ChatMessage]]:
    """One conversation, or a list of them."""
    if messages and isinstance(messages[0], ChatMessage):
        return [messages]  # type: ignore[list-item]
    return list(messages)  # type: ignore[arg-type]


def conversation_part(conversation: Sequence[ChatMessage], index: int) -> ChatTextPart | ChatImagePart:
    """The conversation's one text or image."""
    parts: list[ChatTextPart | ChatImagePart] = []
    for message in conversation:
        if isinstance(message.content, str):
            parts.append(ChatTextPart(type="text", text=message.content))
        else:
            parts.extend(message.content)
    if len(parts) != 1:
        raise APIError(400, f"'messages' conversation {index} has {len(parts)} content parts; image-text models "
                            "embed one text or one image per conversation (send a list of conversations to embed "
                            "several)")
    return parts[0]


async def conversation_prompts(ctx: ServerContext, messages: Conversations) -> list[Prompt]:
    """The prompts of a request's conversations, images loaded; 400 for anything the model cannot take."""
    mc = ctx.model_config
    if "image" not in mc.modalities:
        raise APIError(400, f"'messages' (chat-style input with images) is for image-text models; model "
                            f"\"{mc.served_model_name}\" takes text only: send 'input'")
    conversations = split_conversations(messages)
    limit = ctx.settings.max_inputs_per_request
    if len(conversations) > limit:
        raise APIError(400, f"'messages' has {len(conversations)} conversations, more than this server's limit of "
                            f"{limit} per request")
    parts = [conversation_part(c, i) for i, c in enumerate(conversations)]
    for i, part in enumerate(parts):
        if isinstance(part, ChatTextPart):
            if len(part.text) > ctx.settings.max_input_chars:
                raise APIError(400, f"'messages' conversation {i} has {len(part.text)} characters, more than this "
                                    f"server's limit of {ctx.settings.max_input_chars} characters")
            check_unicode(part.text, f"'messages' conversation {i}")

    fetching = asyncio.Semaphore(IMAGES_AT_ONCE)

    async def load(index: int, part: ChatImagePart) -> ImagePrompt:
        try:
            async with fetching:
                return ImagePrompt(await aload_image_url(part.image_url.url, ctx.media_limits))
        except MediaError as exc:
            raise APIError(400, f"'messages' conversation {index}: {exc}") from None

    images = [(i, p) for i, p in enumerate(parts) if isinstance(p, ChatImagePart)]
    loaded = dict(zip([i for i, _ in images], await asyncio.gather(*(load(i, p) for i, p in images))))
    return [loaded[i] if isinstance(part, ChatImagePart) else part.text for i, part in enumerate(parts)]
