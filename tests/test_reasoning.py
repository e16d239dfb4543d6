"""<think> splitting: the reference's replies, tags cut anywhere, and a property test."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmgate.routing.adapt import ThinkSplitter, split_text

# reference/upstream-lmv2-api.md, the non-stream reply of a DeepSeek-like thinking model (shortened)
REFERENCE = "<think>\n 今天是星期一，我需要确定“后台”是星期几。\n</think>\n 今天是星期一，但“后台”并不是一个具体的日期。"


def merged(pieces: list[tuple[bool, str]]) -> list[tuple[bool, str]]:
    out: list[tuple[bool, str]] = []
    for kind, text in pieces:
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + text)
        elif text:
            out.append((kind, text))
    return out


def streamed(text: str, cuts: list[int]) -> list[tuple[bool, str]]:
    splitter = ThinkSplitter()
    pieces: list[tuple[bool, str]] = []
    start = 0
    for cut in [*sorted(set(cuts)), len(text)]:
        pieces += splitter.feed(text[start:cut])
        start = cut
    return merged(pieces + splitter.end())


def test_reference_reply() -> None:
    assert merged(split_text(REFERENCE)) == [
        (True, "今天是星期一，我需要确定“后台”是星期几。\n"),
        (False, "今天是星期一，但“后台”并不是一个具体的日期。"),
    ]


def test_tags_cut_at_every_character() -> None:
    expected = merged(split_text(REFERENCE))
    for cut in range(len(REFERENCE) + 1):
        assert streamed(REFERENCE, [cut]) == expected, cut
    assert streamed(REFERENCE, list(range(len(REFERENCE)))) == expected  # one character at a time


def test_text_without_tags_is_untouched() -> None:
    for text in [
        "plain answer",
        "  <b>bold</b>",
        "a <think>late tag</think> stays",
        "<thin",
        "<",
        " \n ",
    ]:
        assert merged(split_text(text)) == merged([(False, text)])
        assert streamed(text, list(range(len(text)))) == merged([(False, text)])


def test_unclosed_reasoning_stays_reasoning() -> None:
    assert merged(split_text("<think>cut off by max_tokens</thi")) == [
        (True, "cut off by max_tokens</thi")
    ]


_ALPHABET = st.sampled_from(
    ["a", " ", "\n", "<", ">", "/", "t", "h", "i", "n", "k", "今", "<think>", "</think>", "</th"]
)
_TEXT = st.lists(_ALPHABET, max_size=30).map("".join)


# The same 400 examples on every run and machine: CI must not fail on a slow moment.
@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    lead=st.sampled_from(["", " ", "\n", " \n "]),
    tagged=st.booleans(),
    reasoning=_TEXT,
    gap=st.sampled_from(["", "\n", "\n\n", " \n"]),
    answer=_TEXT,
    cuts=st.lists(st.integers(min_value=0, max_value=120), max_size=12),
)
def test_any_split_of_a_stream_equals_the_whole_reply(
    lead: str, tagged: bool, reasoning: str, gap: str, answer: str, cuts: list[int]
) -> None:
    text = f"{lead}<think>{reasoning}</think>{gap}{answer}" if tagged else lead + answer
    cuts = [cut for cut in cuts if cut <= len(text)]
    whole = merged(split_text(text))
    assert streamed(text, cuts) == whole
    # Nothing is lost: the pieces are the text without the tags and the dropped whitespace.
    if tagged and "</think>" not in reasoning:
        thought = "".join(t for kind, t in whole if kind)
        said = "".join(t for kind, t in whole if not kind)
        assert thought == reasoning.lstrip()
        assert said == (gap + answer).lstrip()
