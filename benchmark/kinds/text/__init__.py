"""The text kind: counterfactual expansion, prompts, scoring of answers, evaluation."""
