"""Keep the garbage collector's full passes short once a model is loaded.

torch, transformers and a loaded BLIP leave ~0.5 million long-lived objects on the heap. CPython's full
(generation 2) collection walks all of them, and the requests' own objects trigger one every ~100,000
promotions: measured 200-260 ms with the GIL held on a 2-core machine under load, a stall that every request
in flight waits out (it was our p99 on the tiny model). ``gc.freeze`` moves what exists now to a permanent
generation that collections skip; what requests create is still collected as before.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect everything (frozen objects included: a model just replaced may be cyclic garbage now), then
    freeze what survives. Call it after a model is loaded and warmed up, and after one is let go."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
