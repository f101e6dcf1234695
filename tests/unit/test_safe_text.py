"""The one sanitizer for text on its way to a terminal (orchestrator/safe_text.py), by tables."""

from __future__ import annotations

import random
import re
import sys
import unicodedata

import pytest

from orchestrator.safe_text import (
    Mark,
    clean_line,
    clean_output,
    clean_text,
    escape_char,
    show_code,
    visible_code,
)

BIDI_WARNING = (
    "bidi control U+202E (RIGHT-TO-LEFT OVERRIDE): "
    "the code may display in another order than it runs"
)
ESC_WARNING = (
    "control character U+001B (ESC): "
    "a terminal would act on it (move, erase, redraw) instead of showing it"
)


@pytest.mark.parametrize(
    ("char", "escape"),
    [
        ("\x1b", "\\x1b"),
        ("\r", "\\r"),
        ("\n", "\\n"),
        ("\t", "\\t"),
        ("\x00", "\\x00"),
        ("\x7f", "\\x7f"),
        ("\x9b", "\\x9b"),
        ("\u202e", "\\u202e"),
        ("\ufeff", "\\ufeff"),
        ("\U000e0041", "\\U000e0041"),
        ("\ud800", "\\ud800"),
    ],
)
def test_escape_char(char: str, escape: str) -> None:
    assert escape_char(char) == escape


@pytest.mark.parametrize(
    ("code", "shown", "warnings"),
    [
        ("print(1)\n", "print(1)\n", []),
        ("if x:\n\treturn 1\n", "if x:\n\treturn 1\n", []),  # tab and newline stay
        ("é ü 日本 ✅ ⚠️\n", "é ü 日本 ✅ ⚠️\n", []),  # text, emoji and U+FE0F are not hidden
        (
            'print("hi")\n# \x1b[1A\x1b[2K\n',
            'print("hi")\n# \\x1b[1A\\x1b[2K\n',
            [f"line 2: {ESC_WARNING}"],
        ),
        (
            "a\x1b\nb\nc\x1b\x1b\n",
            "a\\x1b\nb\nc\\x1b\\x1b\n",
            [f"lines 1, 3: {ESC_WARNING}"],
        ),
        (
            "ok()\rrm()",
            "ok()\\rrm()",
            [
                "line 1: control character U+000D (CR): "
                "a terminal would act on it (move, erase, redraw) instead of showing it"
            ],
        ),
        (
            "x = 1\x7f\x9b2J",
            "x = 1\\x7f\\x9b2J",
            [
                "line 1: control character U+007F (DEL): "
                "a terminal would act on it (move, erase, redraw) instead of showing it",
                "line 1: control character U+009B (CSI): "
                "a terminal would act on it (move, erase, redraw) instead of showing it",
            ],
        ),
        (
            'access = "user\u202e \u2066# admin\u2069 \u2066"',
            'access = "user\\u202e \\u2066# admin\\u2069 \\u2066"',
            [
                f"line 1: {BIDI_WARNING}",
                "line 1: bidi control U+2066 (LEFT-TO-RIGHT ISOLATE): "
                "the code may display in another order than it runs",
                "line 1: bidi control U+2069 (POP DIRECTIONAL ISOLATE): "
                "the code may display in another order than it runs",
            ],
        ),
        (
            "is_admin\u200b = True",
            "is_admin\\u200b = True",
            [
                "line 1: invisible character U+200B (ZERO WIDTH SPACE): "
                "it is in the code but shows as nothing"
            ],
        ),
        (
            "\ufeffx\u00ad = 1",
            "\\ufeffx\\xad = 1",
            [
                "line 1: invisible character U+FEFF (ZERO WIDTH NO-BREAK SPACE): "
                "it is in the code but shows as nothing",
                "line 1: invisible character U+00AD (SOFT HYPHEN): "
                "it is in the code but shows as nothing",
            ],
        ),
        (
            "\u3164 = 2",  # a Hangul filler is a valid identifier that shows as a blank
            "\\u3164 = 2",
            [
                "line 1: invisible character U+3164 (HANGUL FILLER): "
                "it is in the code but shows as nothing"
            ],
        ),
        (
            "s = 'a'\U000e0072\U000e006d\U000e0020",  # ASCII smuggled as tag characters
            "s = 'a'\\U000e0072\\U000e006d\\U000e0020",
            ["line 1: tag characters U+E0000-U+E007F: they are in the code but show as nothing"],
        ),
        (
            "x = 1\u2028y = 2",
            "x = 1\\u2028y = 2",
            [
                "line 1: separator U+2028 (LINE SEPARATOR): "
                "some editors break the line here, the interpreter may not"
            ],
        ),
        (
            "".join(f"l{n}\x1b\n" for n in range(1, 10)),
            "".join(f"l{n}\\x1b\n" for n in range(1, 10)),
            [f"lines 1, 2, 3, 4, 5, 6 and 3 more: {ESC_WARNING}"],
        ),
    ],
)
def test_visible_code(code: str, shown: str, warnings: list[str]) -> None:
    assert visible_code(code) == (shown, warnings)


def test_many_kinds_of_hidden_characters_fold_into_one_warning() -> None:
    code = "\n".join(chr(c) for c in range(1, 20) if chr(c) not in "\t\n")
    _, warnings = visible_code(code)
    assert len(warnings) == 10
    assert warnings[-1].endswith("8 more kinds of hidden characters")
    assert warnings[-1].startswith("lines 10, 11, 12, 13, 14, 15 and 2 more:")


def test_marks_point_at_each_escape_in_the_shown_text() -> None:
    shown = show_code("a\u202eb\nx\x1b[2J\x1b")
    assert shown.marks == [Mark(1, 1, 7), Mark(2, 1, 5), Mark(2, 8, 12)]
    lines = shown.text.split("\n")
    assert [lines[m.line - 1][m.start : m.end] for m in shown.marks] == [
        "\\u202e",
        "\\x1b",
        "\\x1b",
    ]


@pytest.mark.parametrize(
    ("raw", "prose", "line"),
    [
        ("plain words", "plain words", "plain words"),
        ("two\nlines\tand tab", "two\nlines\tand tab", "two\\nlines\\tand tab"),
        ("\x1b]0;title\x07after", "\\x1b]0;title\\x07after", "\\x1b]0;title\\x07after"),
        ("\x1b]52;c;aGk=\x07", "\\x1b]52;c;aGk=\\x07", "\\x1b]52;c;aGk=\\x07"),
        ("\x1bc reset", "\\x1bc reset", "\\x1bc reset"),
        ("\x9b2J", "\\x9b2J", "\\x9b2J"),
        ("done\roverwritten", "done\\roverwritten", "done\\roverwritten"),
        ("abc\b\b\bxyz", "abc\\x08\\x08\\x08xyz", "abc\\x08\\x08\\x08xyz"),
        ("file\u202etxt.exe", "file\\u202etxt.exe", "file\\u202etxt.exe"),
        ("zero\u200bwidth", "zero\\u200bwidth", "zero\\u200bwidth"),
        ("[bold]markup[/] stays text", "[bold]markup[/] stays text", "[bold]markup[/] stays text"),
        (
            "x.csv\noi: finished - done",
            "x.csv\noi: finished - done",
            "x.csv\\noi: finished - done",
        ),
        ("lone \ud83d surrogate", "lone \\ud83d surrogate", "lone \\ud83d surrogate"),
        ("emoji ❤️ stays", "emoji ❤️ stays", "emoji ❤️ stays"),
    ],
)
def test_clean_text_and_clean_line(raw: str, prose: str, line: str) -> None:
    assert clean_text(raw) == prose
    assert clean_line(raw) == line


@pytest.mark.parametrize(
    ("raw", "colour", "plain"),
    [
        ("plain text\n", "plain text\n", "plain text\n"),
        ("\x1b[31mred\x1b[0m", "\x1b[31mred\x1b[0m", "red"),
        ("\x1b[38;2;255;0;0mtrue\x1b[m", "\x1b[38;2;255;0;0mtrue\x1b[m", "true"),
        ("\x1b[38:5:196mcolon\x1b[0m", "\x1b[38:5:196mcolon\x1b[0m", "colon"),
        ("progress 10%\rprogress 20%\n", "progress 10%\rprogress 20%\n", None),
        ("\x1b[2J\x1b[Hcleared", "cleared", None),
        ("\x1b[3A\x1b[2Kup", "up", None),
        ("\x1b]0;evil title\x07after", "after", None),
        ("\x1b]52;c;ZWNobyBoaQ==\x07clip", "clip", None),
        ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link", None),
        ("\x1bP+q544e\x1b\\x", "x", None),
        ("\x1b_apc\x1b\\\x1b^pm\x1b\\\x1bXsos\x1b\\ok", "ok", None),
        ("\x1bcreset", "reset", None),
        ("\x1b(0charset \x1b7\x1b8", "charset ", None),
        ("\x1b[?1049h alt screen", " alt screen", None),
        ("\x1b[?1;2m query \x1b[>4;2m keys", " query  keys", None),  # xterm queries, not SGR
        ("\x1b[c\x1b[6n answers", " answers", None),  # the terminal would type a reply
        ("\x1b[201~ paste end", " paste end", None),
        ("bell\x07 and backspace\x08", "bell and backspace", None),
        ("\x9b2J C1 CSI \x9d0;t\x9c", "2J C1 CSI 0;t", None),
        ("lone escape \x1b", "lone escape ", None),
        ("\x1b\x1b[31mx", "\x1b[31mx", "x"),
        ("\x1b[31\x00m split", "31m split", None),
        ("tab\tok", "tab\tok", None),
        ("rtl\u202eoverride \u200bzw", "rtl\\u202eoverride \\u200bzw", None),
    ],
)
def test_clean_output(raw: str, colour: str, plain: str | None) -> None:
    assert clean_output(raw) == colour
    expected_plain = colour if plain is None else plain
    assert clean_output(raw, keep_color=False) == expected_plain


def _all_chars(category: str) -> list[str]:
    return [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == category]


def test_every_format_and_control_character_of_this_python_is_escaped() -> None:
    """The ranges in safe_text are written out (computing them costs start-up time); this
    fails when a newer Unicode adds a format character they miss."""
    hidden = _all_chars("Cf") + _all_chars("Zl") + _all_chars("Zp") + _all_chars("Cc")
    for char in hidden:
        if char in "\t\n":
            continue
        assert clean_text(char) == escape_char(char), f"U+{ord(char):04X}"
        assert visible_code(char)[1], f"U+{ord(char):04X} gave no warning"


_SGR = re.compile(r"\x1b\[[0-9;:]*m")


def test_random_input_never_leaves_a_control_character() -> None:
    """Fuzz (seeded): whatever comes in, only newline/tab (prose), CR and SGR (output) remain."""
    rng = random.Random(40)
    alphabet = [chr(c) for c in range(0xA0)] + list("[]\\;?0123456789mAHJKP") * 4
    alphabet += ["\u202e", "\u200b", "\ufeff", "\U000e0041", "\u2028", "é"]
    ascii_only = [c for c in alphabet if c.isascii()]  # the fast path for ASCII text too
    for attempt in range(4000):
        letters = ascii_only if attempt % 2 else alphabet
        raw = "".join(rng.choice(letters) for _ in range(rng.randint(0, 40)))
        for cleaned, allowed in (
            (clean_text(raw), "\n\t"),
            (clean_line(raw), ""),
            (visible_code(raw)[0], "\n\t"),
        ):
            assert all(
                unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp") or c in allowed
                for c in cleaned
            ), repr(raw)
        output = _SGR.sub("", clean_output(raw))
        assert all(unicodedata.category(c) not in ("Cc", "Cf") or c in "\n\t\r" for c in output), (
            repr(raw)
        )
        assert "\x1b" not in clean_output(raw, keep_color=False), repr(raw)


def test_visible_code_changes_only_the_display() -> None:
    code = "print('a')\x1b[1A\u202e"
    before = code
    shown, _ = visible_code(code)
    assert code == before and shown != code
