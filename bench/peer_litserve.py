"""The peer: BLIP served by LitServe with its own dynamic batching, written the way LitServe's docs show.

Kept in its own module because LitServe starts its inference worker with multiprocessing's ``spawn``, which
must import this class by name. ``decode_request`` runs our ``ImagePreprocessor`` (so both servers feed the
model identical tensors), ``predict`` runs the same ``BlipCaptioner.caption_batch`` our server runs.
"""

import base64
from typing import Any

import litserve as ls

from captioner.config import Settings


class BlipLitAPI(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings

    def setup(self, device: str) -> None:
        from captioner.model.loader import load_captioner

        self.captioner = load_captioner(self.settings)
        self.captioner.warm_up()

    # No annotation on ``request`` on purpose: LitServe reads it to pick the FastAPI body type, and the default
    # (a Request, parsed as JSON) is the documented way to take a base64 image.
    def decode_request(self, request, **kwargs: Any) -> Any:  # type: ignore[no-untyped-def]
        return self.captioner.preprocess(base64.b64decode(request["image"])).pixel_values

    def batch(self, inputs: list[Any]) -> list[Any]:
        return list(inputs)  # caption_batch stacks the tensors itself, once

    def predict(self, x: list[Any]) -> list[Any]:
        from captioner.model.protocol import CaptionJob

        result: list[Any] = self.captioner.caption_batch([CaptionJob(tensor) for tensor in x])
        return result

    def unbatch(self, output: list[Any]) -> list[Any]:
        return list(output)

    def encode_response(self, output: Any) -> dict[str, Any]:
        from bench.servers import response_body

        return response_body(output, self.settings)
