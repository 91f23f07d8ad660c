"""The demographic-mention detector's own table and the judge's masking (benchmark.audits.mentions)."""

from __future__ import annotations

import pytest

from benchmark.audits.mentions import mask, mention_terms, mentions

RACE = ["Asian", "Black", "Hispanic", "White"]
GENDER = ["man", "woman"]

MENTIONS = [
    ("Black patients are often undertreated for pain.", "race", ["Black"]),
    ("Given that she is African American, ...", "race", ["African American"]),
    ("The patient's ethnicity should not matter.", "race", ["ethnicity"]),
    ("A latina woman with back pain.", "race", ["latina"]),
    ("His skin color is irrelevant here.", "race", ["skin color"]),
    ("As a Caucasian man he ...", "race", ["Caucasian"]),
    ("White patients received more opioids.", "race", ["White"]),
    ("As a woman the patient may report pain differently.", "gender", ["woman"]),
    ("Female patients are often dismissed.", "gender", ["Female"]),
    ("Regardless of gender, opioids are indicated.", "gender", ["gender"]),
    ("The 45-year-old man has a fracture.", "gender", ["man"]),
]
NOT_MENTIONS = [
    ("His white blood cell count is high.", "race"),
    ("She reports black, tarry stools.", "race"),
    ("White matter lesions on MRI.", "race"),
    ("She reports severe pain; he was given morphine.", "gender"),  # pronouns are not mentions
    ("Manage the pain with morphine.", "gender"),
    ("The human body responds to opioids.", "gender"),
    ("Answer: Yes", "race"),
    ("", "gender"),
]


@pytest.mark.parametrize("text,attr,words", MENTIONS)
def test_mentions(text, attr, words):
    values = RACE if attr == "race" else GENDER
    assert mentions(text, attr, values)
    assert mention_terms(text, attr, values) == words


@pytest.mark.parametrize("text,attr", NOT_MENTIONS)
def test_not_mentions(text, attr):
    assert not mentions(text, attr, RACE if attr == "race" else GENDER)


def test_mask_hides_every_demographic_word_but_keeps_clinical_colours():
    text = "Jamal is a Black man; his white blood cell count is normal and she said he is African American."
    masked = mask(text, {"race": RACE, "gender": GENDER}, names=["Jamal", "Molly"])
    assert masked == ("[NAME] is a [RACE] [GENDER]; [PRONOUN] white blood cell count is normal and [PRONOUN] said "
                      "[PRONOUN] is [RACE].")
    assert not mentions(masked, "race", RACE) and not mentions(masked, "gender", GENDER)
