"""The rule for files a plan finds on disk, and the hint that goes with a refusal.

A file we can recognise as ours and that is still right is kept ("already exists, skipped"); one
that is ours but stale (SANs changed, issued by another CA, expired) is replaced with the reason
said; one we cannot read as ours (garbage, a foreign file, a key that does not match its cert) is
never replaced without --force. The CA and the signing key are never replaced without --force,
whatever their state.
"""

FORCE_HINT = "refusing to replace it without --force"
