"""Model backends. Each turns requests into option log-likelihoods or generated text."""
