"""Language identification (py3langid), shared by the stages that check a text's language."""

from __future__ import annotations

from functools import lru_cache

import pycountry


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True)


@lru_cache(maxsize=None)
def langid_code(iso639_3: str) -> str | None:
    """py3langid's two-letter label for an ISO 639-3 code, or None when it does not know the language."""
    lang = pycountry.languages.get(alpha_3=iso639_3)
    code = getattr(lang, "alpha_2", None)
    return code if code in _identifier().nb_classes else None


def identify(text: str) -> tuple[str, float]:
    """(py3langid's two-letter label, its probability) for one text."""
    label, prob = _identifier().classify(text)
    return label, float(prob)


def is_clearly_not(text: str, iso639_3: str, min_confidence: float) -> bool:
    """True when py3langid knows the language and is at least `min_confidence` sure the text is in another one."""
    expected = langid_code(iso639_3)
    if expected is None:
        return False
    label, prob = identify(text)
    return label != expected and prob >= min_confidence
