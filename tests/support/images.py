"""The reference image (``reference/gateway-api.md`` §3.2), as bytes and data URL."""

from __future__ import annotations

import base64
from pathlib import Path

PNG = (
    Path(__file__).parent.parent / "data" / "reference.png"
).read_bytes()  # reference/gateway-api.md §3.2
PNG_B64 = base64.b64encode(PNG).decode()
DATA_URL = f"data:image/png;base64,{PNG_B64}"
