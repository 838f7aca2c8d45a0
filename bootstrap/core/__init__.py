"""Pure: no files written, nothing printed."""
