"""Every error code of the server has its exception in the client, with the same HTTP status."""

from __future__ import annotations

from captioner import errors as server_errors
from captioner.client.errors import ERRORS


def test_every_server_error_code_has_its_exception() -> None:
    def subclasses(cls: type[server_errors.CaptionerError]) -> list[type[server_errors.CaptionerError]]:
        return [cls, *(sub for direct in cls.__subclasses__() for sub in subclasses(direct))]

    statuses: dict[str, set[int]] = {}
    for cls in subclasses(server_errors.CaptionerError):
        statuses.setdefault(cls.code, set()).add(cls.status_code)
    for code, seen in statuses.items():
        assert code in ERRORS, f"the client has no exception for the server's {code!r}"
        assert ERRORS[code][1] in seen, f"{code}: the client says {ERRORS[code][1]}, the server {seen}"
