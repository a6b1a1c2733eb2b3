"""A `.env` file, as `dg dev` reads it: `NAME=value` lines, `export` prefixes, quotes and comments.

Reading takes what a variable is set to; writing sets one variable and keeps every other line as it
was. The file holds secrets, so writing leaves it readable by its owner only.
"""

import os
from pathlib import Path

_QUOTES = ("'", '"')


def _assignment(line: str) -> tuple[str, str] | None:
    """(name, raw value) of a `NAME=value` line; None for comments, blank and other lines."""
    line = line.strip()
    if line.startswith("#") or "=" not in line:
        return None
    name, _, value = line.removeprefix("export ").partition("=")
    return name.strip(), value.strip()


def _unquoted(value: str) -> str:
    if len(value) >= 2 and value[0] in _QUOTES and value[-1] == value[0]:
        return value[1:-1]
    return value.split(" #", 1)[0].rstrip()


def read_env_file(path: Path) -> dict[str, str]:
    """The variables a `.env` file sets (the last line wins); empty when there is no such file."""
    if not path.exists():
        return {}
    assignments = (_assignment(line) for line in path.read_text().splitlines())
    return {name: _unquoted(value) for name, value in filter(None, assignments)}


def set_env_value(path: Path, name: str, value: str) -> None:
    """Set `name` to `value` in the `.env` file at `path`, creating the file if need be: lines that set
    `name` are replaced, else one is appended; every other line stays. The file ends up mode 0600."""
    lines = path.read_text().splitlines() if path.exists() else []
    line = f"{name}={value}"
    replaced = [line if (found := _assignment(old)) and found[0] == name else old for old in lines]
    if line not in replaced:
        replaced.append(line)
    # Written beside the file, private from creation, then renamed over it: the secret is never
    # readable by others, and a crash never leaves half a file.
    partial = path.with_name(f".{path.name}.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write("\n".join(replaced) + "\n")
    os.chmod(partial, 0o600)  # O_CREAT's mode applies to new files only
    os.replace(partial, path)
