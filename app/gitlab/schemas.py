"""GitLab API payload models: only the fields we use, tolerant of extra and missing ones."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NoteableType = Literal["Issue", "MergeRequest"]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=False)


class GitLabUserRef(_Payload):
    username: str
    avatar_url: str | None = None
    # The author's global id and display name: the newest app's "Person" rows.
    id: int | None = None
    name: str | None = None


class _Item(_Payload):
    id: int
    iid: int
    project_id: int
    title: str = ""
    description: str | None = None
    state: str = ""
    author: GitLabUserRef
    labels: list[str] = Field(default_factory=list)
    web_url: str
    created_at: datetime
    updated_at: datetime
    # Unknown (absent or null) count: assume notes exist so none are missed.
    user_notes_count: int = 1
    confidential: bool = False
    assignees: list[GitLabUserRef] = Field(default_factory=list)

    @field_validator("labels", "assignees", mode="before")
    @classmethod
    def _null_list(cls, v: object) -> object:
        return [] if v is None else v

    @field_validator("title", mode="before")
    @classmethod
    def _null_title(cls, v: object) -> object:
        return "" if v is None else v

    @field_validator("user_notes_count", mode="before")
    @classmethod
    def _null_count(cls, v: object) -> object:
        # Unknown count: assume notes exist so none are missed.
        return 1 if v is None else v


class GitLabIssue(_Item):
    pass


class GitLabMergeRequest(_Item):
    pass


class GitLabNote(_Payload):
    id: int
    body: str | None = None
    author: GitLabUserRef
    created_at: datetime
    updated_at: datetime
    system: bool = False
    noteable_type: str | None = None
    noteable_iid: int | None = None
    noteable_id: int | None = None
    project_id: int | None = None
    # Threads that can be resolved (MR review threads, issue threads) and their state.
    resolvable: bool = False
    resolved: bool = False
    # Set by the client from the parent item: "<noteable web_url>#note_<id>".
    web_url: str | None = None

    @field_validator("system", "resolvable", "resolved", mode="before")
    @classmethod
    def _null_flag(cls, v: object) -> object:
        return False if v is None else v


class GitLabDiscussion(_Payload):
    """One thread of an issue or MR (the Discussions API): its notes, oldest first."""

    id: str
    individual_note: bool = False
    notes: list[GitLabNote] = Field(default_factory=list)

    @field_validator("notes", mode="before")
    @classmethod
    def _null_notes(cls, v: object) -> object:
        return [] if v is None else v


class GitLabProject(_Payload):
    id: int
    name: str
    path_with_namespace: str
    web_url: str | None = None


class GitLabCurrentUser(_Payload):
    id: int
    username: str
    name: str | None = None


class OAuthTokenResponse(_Payload):
    access_token: str
    refresh_token: str | None = None
    expires_in: int | None = None
    created_at: int | None = None
    token_type: str | None = None
    scope: str | None = None
