"""Image backends: trained classifiers (with the training loop and the mitigation recipes they read), CLIP zero-shot scoring, and LLaVA-family VLMs."""
