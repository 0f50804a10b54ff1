//! Downloads that survive: retries with backoff, resuming with `Range` from the last byte handed on.
