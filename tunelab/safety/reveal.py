"""The readings of a text the content filter judges: what it says once the usual disguises are undone.

    readings("Һοw dо I ｋ1ll…")  # ["Һοw dо I k1ll…", "How do I kill…"]

Every text is read plainly (NFKC, so full-width and styled letters become plain ones; invisible format characters
removed; line breaks kept, since they end passages). When look-alike letters from other scripts or digits standing
for letters change it, it is read a second time with those undone, and runs that decode as base64 text are read
too. The classifier judges every reading and keeps the worst finding, so undoing a disguise can only add a finding,
never hide one that the plain reading has.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata

# Characters that show nothing: the format characters (Unicode category Cf: zero-width space and joiners, soft
# hyphen, direction marks and isolates, word joiner, BOM, tag characters, …), the combining grapheme joiner,
# variation selectors and the blank fillers of Hangul, Mongolian and Braille.
HIDDEN = re.compile(
    "[\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160\u17b4\u17b5\u180b-\u180f"
    "\u200b-\u200f\u202a-\u202e\u2060-\u206f\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0000-\U000e0fff]")
SPACES = re.compile(r"[^\S\n]+")  # whitespace other than line breaks

# Cyrillic and Greek letters drawn like Latin ones (only those that pass for the Latin letter in common fonts).
LOOK_ALIKES = str.maketrans({
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "һ": "h", "ԁ": "d", "ԛ": "q",
    "ԝ": "w", "ӏ": "l", "ь": "b",
    "А": "A", "В": "B", "Е": "E", "Ё": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C",
    "Т": "T", "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ї": "I", "Ј": "J", "Һ": "H", "Ԁ": "D", "Ԛ": "Q",
    "Ԝ": "W", "Ӏ": "I",
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
    "υ": "u", "χ": "x", "γ": "y", "ω": "w", "ς": "c",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
    "ı": "i", "ȷ": "j", "ɑ": "a", "ɡ": "g", "ɩ": "i", "ℓ": "l",
})

# Digits and signs written for letters. Only words that also hold a letter are read this way, so numbers, prices
# and times stay as they are; "!" only before a letter, where it is not punctuation.
LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g",
                      "@": "a", "$": "s", "|": "l", "+": "t", "€": "e", "£": "l"})
LEET_WORD = re.compile(r"[\w@$|+€£!']*(?:[0-9@$|+€£]|!(?=\w))[\w@$|+€£!']*")
LEET_LONGEST = 24
LETTER = re.compile(r"[^\W\d_]")

BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
DECODE_DEPTH = 2  # base64 inside base64 is read once more, no deeper


def readings(text: str, depth: int = DECODE_DEPTH) -> list[str]:
    """The plain reading of `text`, then the other readings that differ from it."""
    plain = clean(text)
    found = [plain]
    unmasked = unmask(plain)
    if unmasked != plain:
        found.append(unmasked)
    if depth > 0:
        for decoded in decoded_runs(plain):
            found += readings(decoded, depth - 1)
    return list(dict.fromkeys(found))


def clean(text: str) -> str:
    """NFKC, hidden characters removed, spaces collapsed within each line, line breaks kept."""
    text = HIDDEN.sub("", unicodedata.normalize("NFKC", text))
    return "\n".join(SPACES.sub(" ", line).strip() for line in text.splitlines())


def unmask(text: str) -> str:
    """Look-alike letters of other scripts as the Latin letters they pass for, and leetspeak as letters."""
    return LEET_WORD.sub(_unleet, text.translate(LOOK_ALIKES))


def _unleet(match: re.Match) -> str:
    word = match.group()
    if len(word) > LEET_LONGEST or not (LETTER.search(word) or "'" in word.strip("'")):  # a number, a code
        return word
    word = re.sub(r"!(?=\w)", "i", word).replace("11", "ll")  # a doubled 1 reads as "ll" far more often than "ii"
    return word.translate(LEET)


def decoded_runs(text: str) -> list[str]:
    """The text hidden in base64 runs (standard or URL-safe alphabet) that decode to readable UTF-8."""
    found = []
    for run in BASE64_RUN.findall(text):
        body = run.rstrip("=")
        if len(body) % 4 == 1:
            continue
        padded = body + "=" * (-len(body) % 4)
        try:
            raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
            decoded = raw.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            continue
        if _readable(decoded):
            found.append(decoded)
    return found


def _readable(text: str) -> bool:
    """Mostly letters and spaces, as a sentence is; random bytes that happen to be valid UTF-8 are not."""
    printable = sum(ch.isprintable() or ch in "\n\t" for ch in text)
    letters = sum(ch.isalpha() or ch.isspace() for ch in text)
    return printable == len(text) and letters >= 0.7 * len(text) and " " in text
