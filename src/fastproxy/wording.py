"""Counts in words, for messages people read."""


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """'1 app', '2 apps' ('1 open connection', '3 open connections')."""
    return f"{count} {noun}" if count == 1 else f"{count} {nouns or noun + 's'}"
