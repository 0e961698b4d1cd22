"""Fields many request models share, and their checks: the base every task request builds on.

- ``STRICT``: strict types (``"8"`` is not an integer, ``1`` is not a boolean; a float field
  accepts an integer), unknown fields ignored (as the original service did).
- ``TaskFields``: ``task_id``, ``priority``, ``description`` and ``spec()``, the ``TaskSpec`` of
  a request. A request without a ``priority`` gets the service's default for its kind
  (``DEFAULT_TRAIN_PRIORITY``, ``DEFAULT_INFERENCE_PRIORITY``), read from the ``Settings`` that
  the endpoint passes as the validation context (``settings_of``). ``UploadFields``: the satellite upload (``enable_upload``, ``upload_url``, ``token``).
- ``check_device``, ``check_task_id``, ``check_name``: field validators (a ``ValueError``'s text
  is the client's message, after the field's name).
- ``token`` is a secret: it is carried in params for the runner and never appears in a message.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from protocol.settings import Settings
from protocol.tasks import DEVICE_RE, TASK_ID_RE
from web.paths import url_problem

STRICT = ConfigDict(strict=True, extra="ignore")
#: An upload token: visible ASCII, inner spaces allowed ("Bearer x"); "" or null means none.
_TOKEN_RE = re.compile(r"[!-~](?:[ -~]*[!-~])?")
MAX_TOKEN = 4096
#: The forms of a ``device`` (``protocol.tasks.DEVICE_RE``), for messages and help texts.
DEVICE_FORMS: tuple[str, ...] = ("cpu", "cuda", "cuda:N")


def one_of(names: tuple[str, ...], *, quote: bool = False) -> str:
    """``"a, b or c"`` (each in single quotes with ``quote``)."""
    shown = [f"'{n}'" if quote else n for n in names]
    return ", ".join(shown[:-1]) + " or " + shown[-1] if len(shown) > 1 else "".join(shown)


def settings_of(info: ValidationInfo) -> Settings | None:
    """The service's settings a request is validated under (None: validated without them)."""
    context = info.context
    return context if isinstance(context, Settings) else None


def check_device(value: str) -> str:
    if not DEVICE_RE.fullmatch(value):
        raise ValueError(f"must be {one_of(DEVICE_FORMS, quote=True)}")
    return value


def check_task_id(value: str | None) -> str | None:
    if value is not None and not TASK_ID_RE.fullmatch(value):
        raise ValueError(
            "must be 1-128 characters of letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return value


def check_name(value: str | None) -> str | None:
    # ``name`` becomes one directory below save_path: no separators, no climbing.
    if value is not None and (value in ("", ".", "..") or "/" in value or "\\" in value or "\x00" in value):
        raise ValueError("must be a single directory name (no '/', not '.' or '..')")
    return value


class TaskFields(BaseModel):
    """Fields every task request shares."""

    model_config = STRICT

    task_id: str | None = Field(None, description="custom task id (must be new)")
    priority: int = Field(5, ge=1, le=10, description="1-10, higher runs first")
    description: str | None = None

    #: The setting holding the ``priority`` of a request without one (None: the field's default).
    priority_setting: ClassVar[str | None] = None

    _task_id = field_validator("task_id")(check_task_id)

    @model_validator(mode="after")
    def _default_priority(self, info: ValidationInfo) -> Self:
        settings = settings_of(info)
        if settings is not None and self.priority_setting and "priority" not in self.model_fields_set:
            self.priority = int(getattr(settings, self.priority_setting))
        return self

    def spec(self, task_type: str, job: str, params: dict[str, Any], device: str) -> dict[str, Any]:
        """The ``TaskSpec`` object of this request (a plain dict for the control ``submit``)."""
        return {
            "task_type": task_type,
            "job": job,
            "params": params,
            "device": device,
            "priority": self.priority,
            "task_id": self.task_id,
            "description": self.description,
            "strategy_type": getattr(self, "strategy_type", None),
        }


class UploadFields(BaseModel):
    """The satellite upload of a task's results (training, inference)."""

    model_config = STRICT

    enable_upload: bool = Field(False, description="upload results to the satellite platform")
    upload_url: str | None = Field(None, description="upload endpoint (default: the configured one)")
    token: str | None = Field(None, description="auth token for the upload; never echoed or logged")

    @field_validator("upload_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        problem = url_problem(value) if value is not None else None
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        # The token becomes an HTTP header value: anything else would make the upload raise an
        # error quoting it. The value is never echoed.
        if value and not (len(value) <= MAX_TOKEN and _TOKEN_RE.fullmatch(value)):
            raise ValueError(
                f"must be at most {MAX_TOKEN} printable ASCII characters, without control characters "
                "or leading or trailing whitespace"
            )
        return value

    def upload_params(self) -> dict[str, Any]:
        return {"enable_upload": self.enable_upload, "upload_url": self.upload_url, "token": self.token}
