"""Imaging backends, registered under ``fairbench.backends``: ``classifier`` (trained by fairbench),
``clip`` (zero-shot), ``vlm`` (HF LLaVA-family, choice scoring or generation) and ``openai-vlm``
(the ``openai`` backend's imaging form: images sent to a served VLM). The two VLM backends share
``asking.py`` (one question per label) and ``imaging/answers.py`` (answer normalisation Φ)."""
