"""Config errors name the right line after multi-line strings, whose lines may look like TOML
(`[[workers]]`, `key = value`, a closing bracket) without being any."""

from __future__ import annotations

from pathlib import Path

import pytest
from apalis_cli.config import load_config
from apalis_cli.errors import ConfigError

# A command handler whose script is a multi-line string inside an inline table and an array.
# The script's lines would open a table, set keys and close the brackets if they were read as TOML.
BASIC = '''\
[backends.main]
kind = "memory"

[[workers]]
name = "report"
handler = { command = ["sh", "-c", """
if [ -f /tmp/report.lock ]; then exit 0; fi
echo "[[workers]]"
""", "--"] }
concurrency = 0
'''

# The same with a literal string, at the top level of a table (first newline trimmed). (A store's
# option: a worker's name may not hold line breaks.)
LITERAL = """\
[backends.main]
kind = "memory"
note = '''
[[workers]]
concurrency = 5
'''

[[workers]]
name = "report"
handler = "m:f"
concurrency = 0
"""

# A one-line triple-quoted string, then a string holding three quotes, then the error.
ONE_LINE = '''\
[backends.main]
kind = "memory"

[[workers]]
name = """report"""
queue = 'say """ then'
handler = "m:f"
concurrency = 0
'''

# Multi-line strings closing with extra quotes (up to two belong to the string), the second
# inside an array, whose closing brackets follow on the same line.
EXTRA_QUOTES = '''\
[backends.main]
kind = "memory"

[[workers]]
name = """
first"""
handler = { command = ["sh", "-c", """
echo "quoted""""] }
concurrency = 0
'''

# A basic string may hold three quotes when the first is escaped; they do not close it.
ESCAPED = '''\
[backends.main]
kind = "memory"
note = """
she said \\"""
[[workers]]
"""

[[workers]]
name = "report"
handler = "m:f"
concurrency = 0
'''


@pytest.mark.parametrize(
    ("source", "line"),
    [(BASIC, 10), (LITERAL, 11), (ONE_LINE, 8), (EXTRA_QUOTES, 9), (ESCAPED, 11)],
    ids=["basic-in-inline-table", "literal-at-table-level", "one-line", "extra-closing-quotes", "escaped-quotes"],
)
def test_an_error_after_a_multi_line_string_names_its_own_line(tmp_path: Path, source: str, line: int) -> None:
    path = tmp_path / "jobs.toml"
    path.write_text(source)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:{line}: workers[0].concurrency:"), str(info.value)


def test_a_second_worker_after_a_string_holding_a_table_header_keeps_its_index(tmp_path: Path) -> None:
    path = tmp_path / "jobs.toml"
    path.write_text(LITERAL.replace("concurrency = 0\n", 'concurrency = 1\n\n[[workers]]\nname = "two"\nhandler = 7\n'))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:15: workers[1].handler:"), str(info.value)
