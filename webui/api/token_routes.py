"""`/api/v1/tokens`: a user makes, lists and revokes their own API tokens (webui/api/tokens.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field

from webui.api.auth import caller_of
from webui.api.errors import ApiError, error_responses
from webui.api.schemas import CleanBody
from webui.api.tokens import MAX_NAME_CHARS, TokenError, TokenStore, bearer_token


class NewToken(CleanBody):
    name: str = Field(
        "", max_length=MAX_NAME_CHARS, description="what the token is for, e.g. 'Claude Desktop'"
    )


def tokens_router(tokens: TokenStore | None) -> APIRouter:
    router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])

    def store_for(request: Request) -> TokenStore:
        if tokens is None:
            raise ApiError(403, "this server has no login (--auth), so it needs no tokens")
        # A leaked token must not be able to mint more, nor revoke its owner's others.
        if bearer_token(request.headers.get("authorization")) is not None:
            raise ApiError(403, "manage tokens with your user name and password, not with a token")
        return tokens

    @router.post(
        "",
        status_code=201,
        summary="Make an API token for the caller; the answer is the only time it is shown",
        responses=error_responses(403, 422),
    )
    def create_token(request: Request, body: NewToken) -> dict[str, Any]:
        store = store_for(request)
        try:
            token, info = store.create(caller_of(request.state).name, body.name)
        except TokenError as error:
            raise ApiError(422, str(error), "name") from error
        return {**info.public(), "token": token}

    @router.get(
        "",
        summary="The caller's API tokens (never the tokens themselves)",
        responses=error_responses(403),
    )
    def list_tokens(request: Request) -> list[dict[str, Any]]:
        return [info.public() for info in store_for(request).list(caller_of(request.state).name)]

    @router.delete(
        "/{token_id}",
        summary="Revoke one of the caller's API tokens; it stops working at once",
        responses=error_responses(403, 404),
    )
    def revoke_token(request: Request, token_id: str) -> dict[str, Any]:
        if not store_for(request).revoke(caller_of(request.state).name, token_id):
            raise ApiError(404, f"you have no token {token_id!r}")
        return {"revoked": token_id}

    return router
