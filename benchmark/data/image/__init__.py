"""Imaging data: official dataset layouts (CheXpert, MIMIC-CXR-JPG, HAM10000, EyePACS, PTB-XL, OL3I), synth-xray, and the canonical image table every loader returns."""
