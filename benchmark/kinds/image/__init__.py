"""The imaging kind: requests with image content parts, answer normalisation (Φ), validation-tuned thresholds, evaluation."""
