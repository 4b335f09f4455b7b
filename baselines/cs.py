"""CS: gradient cosine similarity collected in one MTL training + TAG's network selection (the TAG paper's baseline)."""

from __future__ import annotations

from bench.compose import Composed


class Cs(Composed):
    name = "cs"
    version = "1"
    defaults = {**Composed.defaults, "signal": "cs"}
