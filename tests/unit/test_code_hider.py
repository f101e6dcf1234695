"""The model's prose without the code it is about to show for approval (code_hider.py)."""

from __future__ import annotations

import pytest

from orchestrator.code_hider import CodeHider, hide_code

F = "`" * 3


@pytest.mark.parametrize(
    ("reply", "shown"),
    [
        ("Plain words.\n", "Plain words.\n"),
        (f"Here:\n{F}python\nprint(1)\n{F}\nDone.\n", "Here:\n(python code: shown below)\nDone.\n"),
        (f"{F}sh\nls\n{F}\n", "(shell code: shown below)\n"),
        (f"{F}js\nconsole.log(1)\n{F}", "(javascript code: shown below)\n"),  # no final newline
        (f"Output looks like:\n{F}json\n{{}}\n{F}\n", f"Output looks like:\n{F}json\n{{}}\n{F}\n"),
        (f"{F}\nplain\n{F}\n", f"{F}\nplain\n{F}\n"),  # unlabelled: prose, as extraction sees it
        ("~~~bash\necho 1\n~~~\nok\n", "(shell code: shown below)\nok\n"),
        (f"{F}python\nx = '{F}'\n{F}\n", "(python code: shown below)\n"),  # a fence inside a string
        (f"{F}{F[:1]}python\ns = '''\n{F}\n'''\n{F}{F[:1]}\n", "(python code: shown below)\n"),
        (f"{F}python\nnever closed\nmore", "(python code: shown below)\n"),  # cut reply
    ],
)
def test_hide_code(reply: str, shown: str) -> None:
    assert hide_code(reply) == shown


def test_chunks_anywhere_give_the_same_text() -> None:
    reply = f"Let me look.\n{F}python\nimport os\nprint(os.getcwd())\n{F}\nThen we see.\n"
    whole = hide_code(reply)
    for size in (1, 2, 3, 5, 7, 11):
        hider = CodeHider()
        pieces = [hider.feed(reply[i : i + size]) for i in range(0, len(reply), size)]
        assert "".join(pieces) + hider.flush() == whole


def test_prose_shows_as_it_streams_and_a_possible_fence_waits_for_its_line() -> None:
    """A slow model's long sentence must not wait for its newline; a line that may open a
    fence (or close the hidden code) is held until it ends."""
    hider = CodeHider()
    assert hider.feed("Here is a long sentence") == "Here is a long sentence"
    assert hider.feed(" that goes on") == " that goes on"
    assert hider.feed(" and ends.\n  ``") == " and ends.\n"  # may be a fence: held
    assert hider.feed("`python\nprint(1)") == "(python code: shown below)\n"
    assert hider.feed("\n``") == ""  # inside hidden code nothing shows
    assert hider.feed("`\nDone") == "Done"
    assert hider.feed(" now.") == " now."
    assert hider.flush() == ""
    mixed = "  Indented prose\n\tand `inline` code\n"
    one = CodeHider()
    assert "".join(one.feed(ch) for ch in mixed) + one.flush() == mixed
