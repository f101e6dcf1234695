"""Code extraction from finished replies: one table, plus the tool-arguments parser."""

from __future__ import annotations

import json

import pytest

from orchestrator.llm.extract import (
    ProposedBlock,
    extract_blocks,
    history_arguments,
    parse_tool_arguments,
    repair_tool_arguments,
)


def md(language: str, code: str, *, unterminated: bool = False) -> ProposedBlock:
    return ProposedBlock(language, code, "markdown", unterminated=unterminated)


def call_json(language: str, code: str, *, arguments_as_string: bool = False) -> str:
    arguments: object = {"language": language, "code": code}
    if arguments_as_string:
        arguments = json.dumps(arguments)
    return json.dumps({"name": "execute", "arguments": arguments})


# (id, reply text, expected blocks)
CASES: list[tuple[str, str, list[ProposedBlock]]] = [
    ("plain python", "Sure.\n```python\nprint(1)\n```\nDone.", [md("python", "print(1)")]),
    ("py alias", "```py\nx = 1\nprint(x)\n```", [md("py", "x = 1\nprint(x)")]),
    ("bash", "```bash\nls -la\n```", [md("bash", "ls -la")]),
    ("sh", "```sh\necho hi\n```", [md("sh", "echo hi")]),
    ("shell", "```shell\necho hi\n```", [md("shell", "echo hi")]),
    ("js", "```js\nconsole.log(1)\n```", [md("js", "console.log(1)")]),
    ("javascript", "```javascript\nconsole.log(1)\n```", [md("javascript", "console.log(1)")]),
    ("node", "```node\nconsole.log(1)\n```", [md("node", "console.log(1)")]),
    ("upper-case tag", "```Python\nprint(1)\n```", [md("python", "print(1)")]),
    ("tilde fence", "~~~python\nprint(1)\n~~~", [md("python", "print(1)")]),
    (
        "four backticks hold nested fences",
        '````python\ns = """\n```\ninner\n```\n"""\nprint(s)\n````',
        [md("python", 's = """\n```\ninner\n```\n"""\nprint(s)')],
    ),
    (
        "inline backticks in code",
        '```python\nprint("```not a fence```")\n```',
        [md("python", 'print("```not a fence```")')],
    ),
    (
        "tag with attributes",
        '```python title="clean.py" linenums="1"\nprint(1)\n```',
        [md("python", "print(1)")],
    ),
    ("braced tag", "```{python}\nprint(1)\n```", [md("python", "print(1)")]),
    ("tag with file name", "```js:main.js\nconsole.log(1)\n```", [md("js", "console.log(1)")]),
    (
        "CRLF line endings",
        "Here:\r\n```bash\r\necho a\r\necho b\r\n```\r\n",
        [md("bash", "echo a\necho b")],
    ),
    (
        "indented fence in a list item",
        "1. Run this:\n   ```python\n   for i in range(2):\n       print(i)\n   ```\n2. Then look.",
        [md("python", "for i in range(2):\n    print(i)")],
    ),
    (
        "several blocks in order, mixed with text",
        "First:\n```python\nopen('a','w').write('1')\n```\nthen\n```bash\ncat a\n```\n"
        "and finally\n```js\nconsole.log(2)\n```",
        [
            md("python", "open('a','w').write('1')"),
            md("bash", "cat a"),
            md("js", "console.log(2)"),
        ],
    ),
    ("no language is not code", "```\nsome output\n```", []),
    (
        "display-only languages are not code",
        '```text\nhello\n```\n```output\n1\n```\n```json\n{"a": 1}\n```\n'
        "```console-output\nok\n```\n```csv\na,b\n```",
        [],
    ),
    ("unknown language is returned", "```ruby\nputs 1\n```", [md("ruby", "puts 1")]),
    (
        "console transcript keeps only $ commands",
        "```console\n$ ls\nfile.txt\n$ echo a \\\n> b\na b\n```",
        [md("shell-session", "ls\necho a \\\nb")],
    ),
    ("console without commands is skipped", "```console\nfile.txt\n```", []),
    (
        "unterminated final fence is kept and flagged",
        "Let me run:\n```python\nimport os\nprint(os.getcwd())",
        [md("python", "import os\nprint(os.getcwd())", unterminated=True)],
    ),
    ("empty block is dropped", "```python\n\n```", []),
    ("fence opener on the last line", "Running now:\n```python", []),
    ("one-line triple backticks are inline code", "Use ```print(1)``` to print.", []),
    (
        "closing fence must be long enough",
        "````bash\necho a\n```\necho b\n````",
        [md("bash", "echo a\n```\necho b")],
    ),
    (
        "hermes tool call as text",
        f"I will list files.\n<tool_call>\n{call_json('bash', 'ls')}\n</tool_call>",
        [ProposedBlock("bash", "ls", "tool_call_text")],
    ),
    (
        "tool call text with arguments as a JSON string",
        f"<tool_call>{call_json('python', 'print(2)', arguments_as_string=True)}</tool_call>",
        [ProposedBlock("python", "print(2)", "tool_call_text")],
    ),
    (
        "tool call text with raw newlines in the code string",
        '<tool_call>\n{"name": "execute", "arguments": {"language": "python", '
        '"code": "a = 1\nprint(a)"}}\n</tool_call>',
        [ProposedBlock("python", "a = 1\nprint(a)", "tool_call_text")],
    ),
    (
        "tool call text without the closing tag",
        f"<tool_call>\n{call_json('shell', 'date')}",
        [ProposedBlock("shell", "date", "tool_call_text")],
    ),
    (
        "tool call text for another tool is prose",
        '<tool_call>{"name": "search", "arguments": {"q": "x"}}</tool_call>',
        [],
    ),
    (
        "two tool calls in one reply",
        f"<tool_call>{call_json('python', 'print(1)')}</tool_call>\n"
        f"<tool_call>{call_json('bash', 'ls')}</tool_call>",
        [
            ProposedBlock("python", "print(1)", "tool_call_text"),
            ProposedBlock("bash", "ls", "tool_call_text"),
        ],
    ),
    (
        "bare execute JSON in prose",
        f"Running: {call_json('python', 'print(3)')} now.",
        [ProposedBlock("python", "print(3)", "bare_json")],
    ),
    (
        "bare execute JSON inside a json fence",
        f"```json\n{call_json('javascript', 'console.log(4)')}\n```",
        [ProposedBlock("javascript", "console.log(4)", "bare_json")],
    ),
    (
        "tool call text inside an untagged fence",
        f"```\n<tool_call>{call_json('bash', 'pwd')}</tool_call>\n```",
        [ProposedBlock("bash", "pwd", "tool_call_text")],
    ),
    (
        "tool call written inside python code stays code",
        f"```python\nprint('<tool_call>{call_json('bash', 'rm -rf /')}</tool_call>')\n```",
        [md("python", f"print('<tool_call>{call_json('bash', 'rm -rf /')}</tool_call>')")],
    ),
    ("JSON that is not a call is prose", 'The file holds {"name": "Alice", "age": 3}.', []),
    (
        "fence, then tool call text, then bare JSON: source order",
        f"```bash\necho 1\n```\n<tool_call>{call_json('bash', 'echo 2')}</tool_call>\n"
        f"{call_json('bash', 'echo 3')}",
        [
            md("bash", "echo 1"),
            ProposedBlock("bash", "echo 2", "tool_call_text"),
            ProposedBlock("bash", "echo 3", "bare_json"),
        ],
    ),
    (
        "tool named after a language",
        '<tool_call>{"name": "python", "arguments": {"code": "print(5)"}}</tool_call>',
        [ProposedBlock("python", "print(5)", "tool_call_text")],
    ),
    ("final answer without code", "The chart is in /workspace/revenue.png.", []),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_extract_blocks(text: str, expected: list[ProposedBlock]) -> None:
    assert extract_blocks(text) == expected


# (id, name, arguments, expected block)
TOOL_ARGUMENT_CASES: list[tuple[str, str, str, ProposedBlock | None]] = [
    (
        "well-formed",
        "execute",
        '{"language": "python", "code": "print(1)"}',
        ProposedBlock("python", "print(1)", "tool_call", "call-1"),
    ),
    (
        "raw newline inside the code string",
        "execute",
        '{"language": "bash", "code": "echo a\necho b"}',
        ProposedBlock("bash", "echo a\necho b", "tool_call", "call-1"),
    ),
    (
        "arguments encoded twice",
        "execute",
        json.dumps(json.dumps({"language": "js", "code": "console.log(1)"})),
        ProposedBlock("js", "console.log(1)", "tool_call", "call-1"),
    ),
    (
        "text around the object",
        "execute",
        'args: {"language": "sh", "code": "ls"} ',
        ProposedBlock("sh", "ls", "tool_call", "call-1"),
    ),
    (
        "lang and script keys, upper-case name and language",
        "Execute",
        '{"lang": "Python", "script": "print(2)"}',
        ProposedBlock("python", "print(2)", "tool_call", "call-1"),
    ),
    (
        "code as a list of lines",
        "execute",
        '{"language": "python", "code": ["a = 1", "print(a)"]}',
        ProposedBlock("python", "a = 1\nprint(a)", "tool_call", "call-1"),
    ),
    (
        "CRLF in the code",
        "execute",
        '{"language": "bash", "code": "echo a\\r\\necho b"}',
        ProposedBlock("bash", "echo a\necho b", "tool_call", "call-1"),
    ),
    (
        "tool named after its language",
        "bash",
        '{"code": "pwd"}',
        ProposedBlock("bash", "pwd", "tool_call", "call-1"),
    ),
    ("another tool is not ours", "web_search", '{"query": "x"}', None),
]

# vLLM's hermes parser drops the closing brace(s) of Qwen3-2507's streamed arguments (vLLM
# issue 22885): put back when only closers are missing and the result parses.
DROPPED_BRACE_CASES: list[tuple[str, str, str, ProposedBlock | None]] = [
    (
        "closing brace dropped",
        "execute",
        '{"language": "python", "code": "print(1)"',
        ProposedBlock("python", "print(1)", "tool_call", "call-1"),
    ),
    (
        "closing brace dropped, whitespace after",
        "execute",
        '{"language": "bash", "code": "ls"\n ',
        ProposedBlock("bash", "ls", "tool_call", "call-1"),
    ),
    (
        "two closing braces dropped after a nested object",
        "execute",
        '{"language": "python", "code": "print(2)", "options": {"timeout": 5',
        ProposedBlock("python", "print(2)", "tool_call", "call-1"),
    ),
    (
        "closing quote and brace dropped",
        "execute",
        '{"language": "bash", "code": "ls -la',
        ProposedBlock("bash", "ls -la", "tool_call", "call-1"),
    ),
    (
        "closing quote and two braces dropped",
        "execute",
        '{"language": "sh", "code": "pwd", "env": {"A": "b',
        ProposedBlock("sh", "pwd", "tool_call", "call-1"),
    ),
    (
        "braces and quotes inside the code are not closers",
        "execute",
        '{"language": "python", "code": "d = {\\"k\\": [1, {2}]}\nprint(d)"',
        ProposedBlock("python", 'd = {"k": [1, {2}]}\nprint(d)', "tool_call", "call-1"),
    ),
    (
        "closing brace dropped, raw newline in the code",
        "execute",
        '{"language": "python", "code": "a = 1\nprint(a)"',
        ProposedBlock("python", "a = 1\nprint(a)", "tool_call", "call-1"),
    ),
    (
        "closing brace dropped after a list of lines",
        "execute",
        '{"language": "python", "code": ["a = 1", "print(a)"]',
        ProposedBlock("python", "a = 1\nprint(a)", "tool_call", "call-1"),
    ),
]
TOOL_ARGUMENT_CASES += DROPPED_BRACE_CASES


@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [c[1:] for c in TOOL_ARGUMENT_CASES],
    ids=[c[0] for c in TOOL_ARGUMENT_CASES],
)
def test_parse_tool_arguments(name: str, arguments: str, expected: ProposedBlock | None) -> None:
    assert parse_tool_arguments(name, arguments, tool_call_id="call-1") == expected


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("", "not valid JSON"),
        # Near misses of the dropped-brace repair: more than closers is missing, or other
        # text is wrong; each must still be refused.
        ('{"language": "python", "code": ["a", "b"', "not valid JSON"),  # an array left open
        ('{"language": "python", "code":', "not valid JSON"),  # a value missing
        ('{"language": "python", "code": "x",', "not valid JSON"),  # a dangling comma
        ('{"language": "python", "co', "not valid JSON"),  # cut inside a key
        ('{"language": "python", "code": "a\\', "not valid JSON"),  # half an escape
        ('{"language": "python" "code": "x"', "not valid JSON"),  # a comma missing too
        ('{"language": "python", "code": "x" oops', "not valid JSON"),  # text after the cut
        ('args: {"language": "python", "code": "x"', "not valid JSON"),  # text before it
        ('{"language": "python", "code": tru', "not valid JSON"),  # a literal cut in half
        ('["python", "print(1)"]', "not valid JSON"),
        ('{"code": "print(1)"}', 'no "language"'),
        ('{"language": "python"}', 'no "code"'),
        ('{"language": "python", "code": 3}', 'no "code"'),
        ('{"language": "python", "code": "   "}', 'empty "code"'),
    ],
)
def test_unusable_execute_arguments_explain_the_format(arguments: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_tool_arguments("execute", arguments)
    # The message goes back to the model: it must show the expected shape.
    assert '{"language": "python", "code": "..."}' in str(caught.value)


def test_dropped_brace_is_not_repaired_when_the_caller_says_the_reply_was_cut() -> None:
    """A reply cut by the token limit looks the same; the caller passes repair=False then."""
    arguments = '{"language": "python", "code": "import os\nprint(os.getc'
    assert parse_tool_arguments("execute", arguments) == ProposedBlock(
        "python", "import os\nprint(os.getc", "tool_call"
    )
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_tool_arguments("execute", arguments, repair=False)


@pytest.mark.parametrize(
    ("arguments", "repaired"),
    [
        ('{"a": 1', '{"a": 1}'),
        ('  {"a": {"b": "c', '{"a": {"b": "c"}}'),
        ('{"a": 1}', None),  # nothing is missing
        ('{"a": [1', None),
        ("", None),
        ('"{\\"a\\": 1"', None),  # not an object
        ('{"a": 1}, {"b": 2', None),  # two objects
    ],
)
def test_repair_tool_arguments(arguments: str, repaired: str | None) -> None:
    assert repair_tool_arguments(arguments) == repaired


@pytest.mark.parametrize(
    ("name", "arguments"),
    [c[1:3] for c in DROPPED_BRACE_CASES],
    ids=[c[0] for c in DROPPED_BRACE_CASES],
)
def test_control_dropped_brace_rows_fail_without_the_repair(name: str, arguments: str) -> None:
    """Positive control: each repaired row really is broken JSON."""
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_tool_arguments(name, arguments, repair=False)


@pytest.mark.parametrize(
    ("arguments", "kept"),
    [
        ('{"a": 1}', '{"a": 1}'),  # an object: as it came
        ('{"a": 1', '{"a": 1}'),  # only closers missing: repaired
        ("{not json", '{"unparsed": "{not json"}'),
        ('["a"]', '{"unparsed": "[\\"a\\"]"}'),  # JSON, but not an object
        ("", '{"unparsed": ""}'),
    ],
)
def test_history_arguments_are_always_a_json_object(arguments: str, kept: str) -> None:
    assert history_arguments(arguments) == kept
    assert isinstance(json.loads(history_arguments(arguments)), dict)
