"""A1111's `POST /sdapi/v1/interrogate`: a caption for an image, from a BLIP model in models/BLIP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from fastapi import APIRouter
from pydantic import Field

from webui.api.errors import ApiError, error_responses
from webui.api.images import decode_image
from webui.api.schemas import CleanBody
from webui.model_manager.captioner import Captioner, CaptionerMissing

# A1111's interrogators: "clip" (BLIP's caption, then CLIP-ranked artist/flavour words) and
# "deepdanbooru" (anime tags). Here "clip" answers BLIP's caption alone.
_BUILT = ("clip",)
_NOT_BUILT = {"deepdanbooru": 'DeepDanbooru tagging is not built; use model "clip" (a BLIP caption)'}


class InterrogateBody(CleanBody):
    image: str = Field(..., description="a base64 image")
    model: str = Field("clip", description='"clip": a BLIP caption (without CLIP\'s added words)')


def interrogate_router(models_dir: Path, device: torch.device) -> APIRouter:
    """The route, to include in the `/sdapi/v1` router."""
    router = APIRouter()
    captioner = Captioner(models_dir, device)  # loads its model on first use, then keeps it

    @router.post(
        "/interrogate",
        summary="Describe an image in words (BLIP caption)",
        responses=error_responses(422, 501),
    )
    def interrogate(body: InterrogateBody) -> dict[str, Any]:
        wanted = body.model.strip().lower()
        if wanted in _NOT_BUILT:
            raise ApiError(422, f"model: {_NOT_BUILT[wanted]}", "model")
        if wanted not in _BUILT:
            raise ApiError(422, f"model: expected one of {', '.join(_BUILT)}, got {body.model!r}", "model")
        image = decode_image(body.image, "image")
        try:
            return {"caption": captioner.caption(image)}
        except CaptionerMissing as missing:
            raise ApiError(501, str(missing)) from missing

    return router
