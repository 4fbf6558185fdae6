"""ANSI colours of job logs as HTML (nixfarm.web.ansi)."""

from __future__ import annotations

from nixfarm.web.ansi import Colouring


def test_sgr_becomes_spans_and_carries_over_lines() -> None:
    lines, rest = Colouring().feed("\x1b[1;31merror:\x1b[0m plain\n\x1b[32mgreen\nstill\x1b[39m "
                                   "default\npartial")
    assert lines == ['<span class="ansi-bold fg-31">error:</span> plain',
                     '<span class="fg-32">green</span>',
                     '<span class="fg-32">still</span> default']
    assert rest == "partial"


def test_text_is_escaped_and_other_sequences_dropped() -> None:
    lines, _ = Colouring().feed("<b>&</b>\x1b[2K\x1b]0;title\x07 done\x1b[38;5;208mx\x1b[0m\n")
    assert lines == ["&lt;b&gt;&amp;&lt;/b&gt; donex"]


def test_carriage_returns_keep_what_was_written_last() -> None:
    lines, _ = Colouring().feed("10%\r50%\r100%\r\nnext\r\n")
    assert lines == ["100%", "next"]


def test_a_sequence_cut_by_a_chunk_waits_for_its_end() -> None:
    colouring = Colouring()
    first, _ = colouring.feed("a\n\x1b[3")
    second, rest = colouring.feed("3mwarn\n")
    assert first == ["a"] and second == ['<span class="fg-33">warn</span>'] and rest == ""
    bright, _ = Colouring().feed("\x1b[101;97mx\n")
    assert bright == ['<span class="fg-97 bg-41">x</span>']
