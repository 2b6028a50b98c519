"""GitLab API payload models: only the fields we use, tolerant of extra and missing ones.

Issues, merge requests, notes and threads (every listing page a sync reads, thousands per
poll) are msgspec Structs, decoded straight from the body's bytes: a fifth to a third of
what building a pydantic model per item cost (`Decoder`). Which answers are accepted, the
values they give and the errors a refused one raises stay pydantic's: the pydantic models
below are the referee. A body msgspec refuses (a wrong type, a lax form such as "5" for a
number or a date without a time, a fraction of a second past microseconds) is validated by
them instead: accepted, it gives the same Structs; refused, their ValidationError is what
the caller sees (sansio.decode_json). Projects, the current user and OAuth answers (a few
per run) stay pydantic models.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import msgspec
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

NoteableType = Literal["Issue", "MergeRequest"]

T = TypeVar("T")


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=False)


# --- the hot path: msgspec Structs ------------------------------------------------------------
#
# A JSON null where a default applies (labels, assignees, title, counts, flags, notes) is read
# as the default in __post_init__, as the pydantic validators below do; the fields are typed
# for the code that reads them.


class GitLabUserRef(msgspec.Struct):
    username: str
    avatar_url: str | None = None
    # The author's global id and display name: the newest app's "Person" rows.
    id: int | None = None
    name: str | None = None


class _Item(msgspec.Struct):
    id: int
    iid: int
    project_id: int
    author: GitLabUserRef
    web_url: str
    created_at: datetime
    updated_at: datetime
    description: str | None = None
    if TYPE_CHECKING:
        title: str = ""
        state: str = ""
        labels: list[str] = []
        # Unknown (absent or null) count: assume notes exist so none are missed.
        user_notes_count: int = 1
        confidential: bool = False
        assignees: list[GitLabUserRef] = []
    else:
        title: str | None = ""
        state: str = ""
        labels: list[str] | None = msgspec.field(default_factory=list)
        user_notes_count: int | None = 1
        confidential: bool = False
        assignees: list[GitLabUserRef] | None = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.title is None:
            self.title = ""
        if self.labels is None:
            self.labels = []
        if self.user_notes_count is None:
            self.user_notes_count = 1
        if self.assignees is None:
            self.assignees = []

    @classmethod
    def model_validate(cls: type[T], data: Any) -> T:
        """From a dict, as pydantic's model_validate (tests build payloads this way)."""
        return _convert(_MODELS[cls].model_validate(data), cls)


class GitLabIssue(_Item):
    pass


class GitLabMergeRequest(_Item):
    pass


class GitLabNote(msgspec.Struct):
    id: int
    author: GitLabUserRef
    created_at: datetime
    updated_at: datetime
    body: str | None = None
    noteable_type: str | None = None
    noteable_iid: int | None = None
    noteable_id: int | None = None
    project_id: int | None = None
    # Set by the client from the parent item: "<noteable web_url>#note_<id>".
    web_url: str | None = None
    if TYPE_CHECKING:
        system: bool = False
        # Threads that can be resolved (MR review threads, issue threads) and their state.
        resolvable: bool = False
        resolved: bool = False
    else:
        system: bool | None = False
        resolvable: bool | None = False
        resolved: bool | None = False

    def __post_init__(self) -> None:
        if self.system is None:
            self.system = False
        if self.resolvable is None:
            self.resolvable = False
        if self.resolved is None:
            self.resolved = False

    @classmethod
    def model_validate(cls, data: Any) -> GitLabNote:
        return _convert(_NoteModel.model_validate(data), cls)


class GitLabDiscussion(msgspec.Struct):
    """One thread of an issue or MR (the Discussions API): its notes, oldest first."""

    id: str
    individual_note: bool = False
    if TYPE_CHECKING:
        notes: list[GitLabNote] = []
    else:
        notes: list[GitLabNote] | None = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.notes is None:
            self.notes = []

    @classmethod
    def model_validate(cls, data: Any) -> GitLabDiscussion:
        return _convert(_DiscussionModel.model_validate(data), cls)


# --- the referee: pydantic models of the same payloads ------------------------------------------


class _UserRefModel(_Payload):
    username: str
    avatar_url: str | None = None
    id: int | None = None
    name: str | None = None


class _ItemModel(_Payload):
    id: int
    iid: int
    project_id: int
    title: str = ""
    description: str | None = None
    state: str = ""
    author: _UserRefModel
    labels: list[str] = Field(default_factory=list)
    web_url: str
    created_at: datetime
    updated_at: datetime
    user_notes_count: int = 1
    confidential: bool = False
    assignees: list[_UserRefModel] = Field(default_factory=list)

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
        return 1 if v is None else v


class _NoteModel(_Payload):
    id: int
    body: str | None = None
    author: _UserRefModel
    created_at: datetime
    updated_at: datetime
    system: bool = False
    noteable_type: str | None = None
    noteable_iid: int | None = None
    noteable_id: int | None = None
    project_id: int | None = None
    resolvable: bool = False
    resolved: bool = False
    web_url: str | None = None

    @field_validator("system", "resolvable", "resolved", mode="before")
    @classmethod
    def _null_flag(cls, v: object) -> object:
        return False if v is None else v


class _DiscussionModel(_Payload):
    id: str
    individual_note: bool = False
    notes: list[_NoteModel] = Field(default_factory=list)

    @field_validator("notes", mode="before")
    @classmethod
    def _null_notes(cls, v: object) -> object:
        return [] if v is None else v


_MODELS: dict[type[Any], type[_Payload]] = {
    GitLabUserRef: _UserRefModel,
    GitLabIssue: _ItemModel,
    GitLabMergeRequest: _ItemModel,
    GitLabNote: _NoteModel,
    GitLabDiscussion: _DiscussionModel,
}
_NESTED: dict[type[Any], dict[str, type[Any]]] = {
    GitLabIssue: {"author": GitLabUserRef, "assignees": GitLabUserRef},
    GitLabMergeRequest: {"author": GitLabUserRef, "assignees": GitLabUserRef},
    GitLabNote: {"author": GitLabUserRef},
    GitLabDiscussion: {"notes": GitLabNote},
}


def _convert(model: Any, cls: type[T]) -> T:
    """A validated pydantic model as the Struct of the same payload."""
    nested = _NESTED.get(cls, {})
    values = {}
    for name in cls.__struct_fields__:  # type: ignore[attr-defined]
        value = getattr(model, name)
        inner = nested.get(name)
        if inner is not None:
            if isinstance(value, list):
                value = [_convert(v, inner) for v in value]
            else:
                value = _convert(value, inner)
        values[name] = value
    return cls(**values)


# More than six digits after a decimal point: msgspec rounds such a fraction of a second
# where pydantic truncates it, so a body that has one (in a time or anywhere else) is left to
# pydantic.
_LONG_FRACTION = re.compile(rb"\.[0-9]{7}")


class Decoder(Generic[T]):
    """`validate_json(body)` for a payload type (a Struct or a list of one): msgspec first,
    the pydantic referee for whatever msgspec refuses (see the module docstring)."""

    def __init__(self, kind: Any, item: type[Any]) -> None:
        self._fast = msgspec.json.Decoder(kind)
        self._item = item
        self._many = getattr(kind, "__origin__", None) is list
        model: Any = _MODELS[item]
        self._referee: TypeAdapter[Any] = TypeAdapter(list[model] if self._many else model)

    def validate_json(self, body: bytes) -> T:
        if not _LONG_FRACTION.search(body):
            try:
                return self._fast.decode(body)
            except (msgspec.ValidationError, msgspec.DecodeError):
                pass
        checked = self._referee.validate_json(body)  # raises pydantic's ValidationError
        if self._many:
            return [_convert(m, self._item) for m in checked]  # type: ignore[return-value]
        return _convert(checked, self._item)


ISSUES: Decoder[list[GitLabIssue]] = Decoder(list[GitLabIssue], GitLabIssue)
MERGE_REQUESTS: Decoder[list[GitLabMergeRequest]] = Decoder(
    list[GitLabMergeRequest], GitLabMergeRequest
)
NOTES: Decoder[list[GitLabNote]] = Decoder(list[GitLabNote], GitLabNote)
DISCUSSIONS: Decoder[list[GitLabDiscussion]] = Decoder(list[GitLabDiscussion], GitLabDiscussion)
ISSUE: Decoder[GitLabIssue] = Decoder(GitLabIssue, GitLabIssue)
MERGE_REQUEST: Decoder[GitLabMergeRequest] = Decoder(GitLabMergeRequest, GitLabMergeRequest)
NOTE: Decoder[GitLabNote] = Decoder(GitLabNote, GitLabNote)


# --- the rare calls: pydantic models --------------------------------------------------------------


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
