"""Item text as UniSRec/MISSRec built it: cleaned metadata fields joined as "title. categories. brand."."""
import html
import re

_TAG = re.compile(r"<[^>]*>")
_WHITESPACE = re.compile(r"\s+")


def clean_text(value):
    """Metadata fields come as strings or (nested) lists, with HTML entities and tags; return plain text."""
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN from pandas
        return ""
    if isinstance(value, (list, tuple)):
        return _WHITESPACE.sub(" ", " ".join(clean_text(part) for part in value)).strip()
    text = html.unescape(html.unescape(str(value)))  # some titles are escaped twice (&amp;quot;)
    text = _TAG.sub(" ", text)
    return _WHITESPACE.sub(" ", text).strip()


def join_fields(values):
    """Non-empty cleaned fields, each closed by a full stop, as in the published ``.text`` files."""
    parts = [clean_text(value) for value in values]
    return " ".join(part if part.endswith(".") else part + "." for part in parts if part)


# A sentence ends at ".", "!" or "?" (a closing quote or bracket after it stays with it) followed by
# whitespace; "4.5-Inch", "O.D.140" or a URL have no space after the dot and stay whole.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+")
_WORD_CHARACTER = re.compile(r"[^\W_]")  # a letter or digit
_TRAILING_STOPS = re.compile(r"[\s.!?]+$")


def _word_characters(text):
    return len(_WORD_CHARACTER.findall(text))


def _join_short_parts(parts, min_chars):
    """Parts with fewer than ``min_chars`` letters or digits ("Mr.", "J.") are the head of the next part
    (the last one goes onto the one before), so an abbreviation does not become a sentence of its own."""
    joined, pending = [], ""
    for part in parts:
        part = f"{pending} {part}" if pending else part
        if _word_characters(part) < min_chars:
            pending = part
            continue
        joined.append(part)
        pending = ""
    if pending:
        if joined:
            joined[-1] = f"{joined[-1]} {pending}"
        else:
            joined.append(pending)
    return joined


def split_sentences(text, max_sentences=10, min_chars=2):
    """An item text's sentences, in order: the multi-vector text modality (MSM4SR, reference §2.2).

    Rules: split after ``.``/``!``/``?`` followed by whitespace; drop parts with no letter or digit (a
    stray "." of an empty field); join parts shorter than ``min_chars`` letters or digits onto their
    neighbour; drop repeats (same sentence up to case, spacing and final stops), keeping the first; keep
    the first ``max_sentences``. Item texts ``title. categories. brand.`` give 3 sentences.
    """
    parts = [part.strip() for part in _SENTENCE_END.split(str(text or ""))]
    parts = _join_short_parts([part for part in parts if _word_characters(part)], min_chars)
    sentences, seen = [], set()
    for sentence in parts:
        key = _TRAILING_STOPS.sub("", _WHITESPACE.sub(" ", sentence).casefold())
        if key not in seen:
            seen.add(key)
            sentences.append(sentence)
    return sentences[:max_sentences]
