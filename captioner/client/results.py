"""What the client returns: typed views of the API's JSON bodies, each keeping the body itself as ``raw``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from captioner.client.errors import UnexpectedResponse


class Caption(NamedTuple):
    text: str
    confidence: float  # a probability in (0, 1]; see the README for how the server derives it


@dataclass(frozen=True)
class CaptionResult:
    """A ``status: success`` caption body. ``captions`` are distinct and sorted best first."""

    captions: tuple[Caption, ...]
    model: str
    cached: bool
    image_sha256: str  # what ``feedback(image_sha256=...)`` refers to
    variant: str | None = None  # the A/B variant that answered, when the server names one
    job_id: str | None = None  # set for the result of an async job
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def text(self) -> str:
        """The best caption."""
        return self.captions[0].text

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> CaptionResult:
        try:
            captions = tuple(Caption(str(c["text"]), float(c["confidence"])) for c in body["captions"])
            return cls(
                captions=captions,
                model=str(body["model"]),
                cached=bool(body.get("cached", False)),
                image_sha256=str(body["image_sha256"]),
                variant=_optional_str(body.get("variant")),
                job_id=_optional_str(body.get("job_id")),
                raw=body,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UnexpectedResponse(f"not a caption result ({type(exc).__name__}: {exc}): {body!r:.200}") from exc


@dataclass(frozen=True)
class Job:
    """An accepted async job (``POST ?mode=async`` answered 202). Pass it, or its ``job_id``, to ``result()``."""

    job_id: str
    estimated_time_s: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Job:
        job_id = body.get("job_id")
        if not isinstance(job_id, str) or not job_id:
            raise UnexpectedResponse(f"a 202 without a job_id: {body!r:.200}")
        estimate = body.get("estimated_time_seconds")
        return cls(job_id, float(estimate) if isinstance(estimate, int | float) else None, body)


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)
