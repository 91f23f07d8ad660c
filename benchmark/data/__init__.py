"""Data: official layouts and bundled files -> instances (text cases, image tables); the held-out split."""
