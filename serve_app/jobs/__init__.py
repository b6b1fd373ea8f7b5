"""Durable transcription jobs: submitted, run from a shared queue under leases by every
ingress replica, resumed after a lost replica, and reported by status, result and signed
callback (docs/jobs.md)."""
