"""Terminal colours in job logs, as HTML: ANSI SGR sequences become ``<span class>``.

Build tools colour their output with SGR sequences (``ESC [ 1;31 m``). The page shows
them as spans with classes the stylesheet colours (``fg-31``, ``bg-42``, ``ansi-bold``);
every other escape sequence (cursor moves, titles) is dropped, and a carriage return
inside a line keeps only what was written after it, as a terminal shows a progress
bar. The same rules are in ``static/log.js``, which colours lines arriving live.

A style carries over line ends (a ``ESC[31m`` on one line colours the next until a
reset), so :class:`Colouring` keeps it between calls, and a sequence cut by a chunk's
end is held until the rest arrives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from markupsafe import Markup, escape

_ESCAPE = re.compile(r"\x1b(?:\[([0-9;:?]*)([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
#: An escape sequence that a chunk's end may have cut.
_CUT = re.compile(r"\x1b(?:\[[0-9;:?]*|\][^\x07\x1b]*)?\Z")


@dataclass(frozen=True)
class Style:
    bold: bool = False
    dim: bool = False
    italic: bool = False
    underline: bool = False
    fg: int | None = None
    bg: int | None = None

    def classes(self) -> str:
        names = [name for name, on in (("ansi-bold", self.bold), ("ansi-dim", self.dim),
                                       ("ansi-italic", self.italic),
                                       ("ansi-underline", self.underline)) if on]
        if self.fg is not None:
            names.append(f"fg-{self.fg}")
        if self.bg is not None:
            names.append(f"bg-{self.bg}")
        return " ".join(names)


def _apply(style: Style, params: str) -> Style:
    codes = [int(p) if p.isdigit() else 0 for p in params.replace(":", ";").split(";")]
    i = 0
    while i < len(codes):
        code = codes[i]
        if code == 0:
            style = Style()
        elif code in (1, 2, 3, 4):
            style = replace(style, **{("bold", "dim", "italic", "underline")[code - 1]: True})
        elif code == 22:
            style = replace(style, bold=False, dim=False)
        elif code == 23:
            style = replace(style, italic=False)
        elif code == 24:
            style = replace(style, underline=False)
        elif 30 <= code <= 37 or 90 <= code <= 97:
            style = replace(style, fg=code)
        elif code == 39:
            style = replace(style, fg=None)
        elif 40 <= code <= 47:
            style = replace(style, bg=code)
        elif 100 <= code <= 107:
            style = replace(style, bg=code - 60)  # bright backgrounds: the plain ones
        elif code == 49:
            style = replace(style, bg=None)
        elif code in (38, 48):  # 256-colour and true-colour: not drawn, parameters skipped
            i += 2 if i + 1 < len(codes) and codes[i + 1] == 5 else 4
        i += 1
    return style


class Colouring:
    """Turns a log's text, fed in pieces, into HTML lines."""

    def __init__(self) -> None:
        self.style = Style()
        self._held = ""

    def feed(self, text: str) -> tuple[list[Markup], Markup]:
        """The complete lines ``text`` ends (each without its newline), and the HTML
        of the line still open after it (what follows the last newline)."""
        text = self._held + text
        cut = _CUT.search(text)
        self._held = text[cut.start():] if cut else ""
        if cut:
            text = text[:cut.start()]
        *done, rest = text.split("\n")
        return [self._line(line) for line in done], self._line(rest, advance=False)

    def _line(self, line: str, advance: bool = True) -> Markup:
        if "\r" in line.rstrip("\r"):
            line = line.rstrip("\r").rsplit("\r", 1)[1]
        line = line.rstrip("\r")
        style = self.style
        out: list[str] = []
        position = 0
        for match in _ESCAPE.finditer(line):
            out.append(_span(style, line[position:match.start()]))
            if match.group(2) == "m":
                style = _apply(style, match.group(1) or "0")
            position = match.end()
        out.append(_span(style, line[position:]))
        if advance:
            self.style = style
        return Markup("".join(out))


def _span(style: Style, text: str) -> str:
    if not text:
        return ""
    classes = style.classes()
    if not classes:
        return str(escape(text))
    return f'<span class="{classes}">{escape(text)}</span>'
