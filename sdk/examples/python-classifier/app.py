"""Example reply classifier in Python: yes/no in English and French,
numbers, numbered choices and configured keywords. A small cousin of the
Rust `keywords` classifier (plugins/classifiers/keywords).

componentize-py generates the `wit_world` package from sdk/wit; this module
provides the class `WitWorld` with the world's exports.
"""

import json
import re
import unicodedata

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.classifier_types import (
    AnswerType,
    Classification,
    ClassifierInfo,
    Field,
)
from wit_world.imports.types import PluginError_InvalidInput, PluginInfo, PluginKind

NAME = "py-keywords"
VERSION = "1.0.0"
MAX_TEXT = 4096

# word -> language; None when the word is not specific to one language.
YES = {"yes": "en", "yeah": "en", "y": None, "ok": None, "okay": "en", "oui": "fr", "ouais": "fr"}
NO = {"no": None, "n": None, "nope": "en", "non": "fr"}

EN_NUMBERS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen twenty"
).split()
FR_NUMBERS = (
    "zero un deux trois quatre cinq six sept huit neuf dix onze douze treize "
    "quatorze quinze seize dix-sept dix-huit dix-neuf vingt"
).split()

# Words that only introduce a choice: "option 2", "choix 3".
CHOICE_PREFIXES = {"option", "choice", "choix", "number"}


def fold(text):
    """Lowercase, without accents: "Réponse" -> "reponse"."""
    decomposed = unicodedata.normalize("NFKD", text.lower().replace("\u2019", "'"))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def words(folded):
    """Words of a folded text, keeping inner hyphens, dots and commas (1,5)."""
    out = []
    for w in re.split(r"[^\w'.,-]+", folded):
        w = w.strip("-.,'")
        if w:
            out.append(w)
    return out


def result(label, confidence, fields=(), language=None):
    return Classification(label, confidence, [Field(n, v) for n, v in fields], language)


def yes_no(folded):
    """(label, confidence, language) from the first word, or None."""
    ws = words(folded)
    if not ws:
        return None
    confidence = 0.95 if len(ws) == 1 else 0.8
    for label, lexicon in (("yes", YES), ("no", NO)):
        if ws[0] in lexicon:
            return label, confidence, lexicon[ws[0]]
    return None


def number(folded):
    """(value, confidence, language) for digits or a number word, or None."""
    for w in words(folded):
        if re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d+)?", w):  # 1,200
            return w.replace(",", ""), 0.95, None
        if re.fullmatch(r"\d+([.,]\d+)?", w):  # 12, 3.5, 3,5
            return w.replace(",", "."), 0.95, None
    ws = words(folded)
    for w in ws:
        en = w in EN_NUMBERS
        fr = w in FR_NUMBERS
        if en or fr:
            value = EN_NUMBERS.index(w) if en else FR_NUMBERS.index(w)
            language = None if en and fr else ("en" if en else "fr")
            return str(value), 0.8, language
    return None


def choice(folded, choices):
    """(1-based index, confidence) of the choice the reply picks, or None."""
    texts = [fold(c).strip() for c in choices]
    if folded.strip() in texts:
        return texts.index(folded.strip()) + 1, 0.95
    ws = words(folded)
    if ws and ws[0] in CHOICE_PREFIXES:
        ws = ws[1:]
    if not ws:
        return None
    token = ws[0].strip("().")
    if token.isdigit():
        index = int(token)
    elif len(token) == 1 and "a" <= token <= "z":
        index = ord(token) - ord("a") + 1
    else:
        # A choice named inside a longer reply: "I think not sure".
        for i, text in enumerate(texts):
            if text and re.search(r"(^|\W)" + re.escape(text) + r"($|\W)", folded):
                return i + 1, 0.7
        return None
    if 1 <= index <= len(choices):
        return index, 0.95 if len(ws) == 1 else 0.85
    return None


def configured_keywords():
    """The `keywords` setting: label -> list of words (the host passes tables as JSON)."""
    raw = host.config("keywords")
    if raw is None:
        return {}
    try:
        table = json.loads(raw)
    except ValueError:
        table = None
    if not isinstance(table, dict) or not all(isinstance(v, list) for v in table.values()):
        raise Err(PluginError_InvalidInput("setting `keywords` must be a table of label = [words]"))
    return table


def keyword(folded, table):
    """(label, word) of the first configured keyword found as whole words."""
    padded = " " + " ".join(words(folded)) + " "
    for label, ws in table.items():
        for w in ws:
            if " " + " ".join(words(fold(str(w)))) + " " in padded:
                return label, w
    return None


class WitWorld(wit_world.WitWorld):
    def describe(self):
        return ClassifierInfo(
            PluginInfo(
                NAME,
                VERSION,
                PluginKind.CLASSIFIER,
                "Example in Python: yes/no (en, fr), numbers, numbered choices, keywords",
            ),
            ["en", "fr"],
        )

    def classify(self, text, context):
        if len(text.encode()) > MAX_TEXT:
            raise Err(PluginError_InvalidInput(f"reply of {len(text.encode())} bytes is over {MAX_TEXT}"))
        folded = fold(text)
        hint = context.language_hint
        expected = context.expected

        if expected == AnswerType.YES_NO:
            found = yes_no(folded)
            if found:
                label, confidence, language = found
                return result(label, confidence, language=language or hint)
        elif expected == AnswerType.NUMBER:
            found = number(folded)
            if found:
                value, confidence, language = found
                return result("number", confidence, [("number", value)], language or hint)
        elif expected == AnswerType.CHOICE:
            found = choice(folded, context.choices)
            if found:
                index, confidence = found
                return result(context.choices[index - 1], confidence, [("choice-index", str(index))], hint)
        else:  # free text: configured keywords first, then a weaker yes/no
            found = keyword(folded, configured_keywords())
            if found:
                label, word = found
                return result(label, 0.9, [("keyword", word)], hint)
            found = yes_no(folded)
            if found:
                label, confidence, language = found
                return result(label, confidence * 0.8, language=language or hint)

        host.log(host.LogLevel.DEBUG, f"no {expected.name.lower()} answer found")
        return result("unknown", 0.0, language=hint)
