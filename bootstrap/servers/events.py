"""What every server of the bundle shares without any network stack: the refusal a caller is
given, and one JSON line per event on stderr. The gRPC gate needs these and no HTTP library."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

CLIP = 200  # longest caller-supplied string we log or echo


class Refusal(Exception):
    """A request we answer with `status` and a short message meant for the caller."""

    def __init__(self, status: int, message: str, detail: str | None = None):
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail


def clip(value) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= CLIP else text[:CLIP] + "..."


def log_event(event: str, **fields) -> None:
    """One JSON object per line: a caller cannot forge a line, whatever its strings hold."""
    doc = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": event}
    doc.update({k: v for k, v in fields.items() if v is not None})
    print(json.dumps(doc, ensure_ascii=True, separators=(",", ":")), file=sys.stderr, flush=True)


AUDIT_SCHEMA = 1


def audit(service: str, action: str, outcome: str, status: int, *, principal, namespace=None, remote=None,
          **detail) -> None:
    """The one audit line every service writes (docs/audit.md): event "audit", schema, service,
    action, outcome, status, principal (the name Temporal's history stamps for the same caller),
    namespace, remote, then the service's own details. Never a token, key or payload."""
    log_event("audit", schema=AUDIT_SCHEMA, service=service, action=action, outcome=outcome, status=status,
              principal=clip(principal), namespace=clip(namespace), remote=remote, **detail)
