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
