"""Offline checks of Terraform code without a terraform binary: reading .tf files with
python-hcl2, the layout `terraform fmt -check` enforces, Terraform type expressions with
their optional() defaults, and a renderer for the subset of the template language our
templates use. tests/unit/test_terraform.py drives them.

The renderer supports `${path}`, `${jsonencode(path)}`, `${base64encode(path)}` and the
directives `%{ for x in path ~}`, `%{ if path ~}`, `%{ if path != "" ~}`, `%{ else ~}`,
`%{ endif ~}`, `%{ endfor ~}` alone on a line at column 0 (where Terraform's output is the
same as dropping the line). Anything else raises, which keeps the templates inside what the
tests can check faithfully.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import hcl2

# --- reading HCL -------------------------------------------------------------------------


def unq(text: Any) -> Any:
    """python-hcl2 >= 5 keeps the quotes of string literals and block labels; heredocs come
    as '"<<-EOT\\n...\\n  EOT"' and are returned as their text."""
    if not (isinstance(text, str) and len(text) >= 2 and text[0] == text[-1] == '"'):
        return text
    inner = text[1:-1]
    m = re.fullmatch(r"<<(-?)([A-Z]+)\n(.*\n)\s*\2", inner, re.S)
    if m:
        return textwrap.dedent(m.group(3)) if m.group(1) else m.group(3)
    return json.loads(text) if "\\" in inner else inner


def plain(value: Any) -> Any:
    """A parsed HCL literal (a tfvars value, a default) as Python data."""
    if isinstance(value, str):
        return unq(value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {unq(k): plain(v) for k, v in value.items() if not k.startswith("__")}
    return value


@functools.cache
def load(path: Path) -> dict[str, Any]:
    """Parsed once per run: python-hcl2 is slow, and nothing here mutates the result."""
    with open(path, encoding="utf-8") as f:
        data: dict[str, Any] = hcl2.load(f)
    return data


def blocks(directory: Path, kind: str) -> dict[str, Any]:
    """Labelled blocks of one kind (variable, output, module) across a module's .tf files."""
    found: dict[str, Any] = {}
    for path in sorted(directory.glob("*.tf")):
        for entry in load(path).get(kind, []):
            for label, body in entry.items():
                assert unq(label) not in found, f"{path}: {kind} {label} declared twice"
                found[unq(label)] = body
    return found


def resources(directory: Path) -> dict[tuple[str, str], Any]:
    found: dict[tuple[str, str], Any] = {}
    for path in sorted(directory.glob("*.tf")):
        for entry in load(path).get("resource", []):
            for kind, named in entry.items():
                for name, body in named.items():
                    found[(unq(kind), unq(name))] = body
    return found


def locals_of(directory: Path) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for path in sorted(directory.glob("*.tf")):
        for block in load(path).get("locals", []):
            found.update({k: v for k, v in block.items() if not k.startswith("__")})
    return found


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if not k.startswith("__"):
                yield k
                yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def all_strings(directory: Path) -> list[str]:
    return [s for path in sorted(directory.glob("*.tf")) for s in strings(load(path))]


def refs(directory: Path, pattern: str) -> set[str]:
    rx = re.compile(pattern)
    return {m.group(1) for s in all_strings(directory) for m in rx.finditer(s)}


# --- terraform fmt -----------------------------------------------------------------------
# The rules of hclwrite's formatter (what `terraform fmt` runs) that we can check line by
# line: indentation is two spaces per open bracket level (a line opening several brackets
# indents the next ones once); in a run of consecutive lines that each hold a whole
# `name = value` the `=` signs line up one space after the longest name (a line opening a
# multi-line value, a blank line, a comment line or a nested block ends the run), and so do
# trailing comments of consecutive lines; no space between a name and `(` (so fmt writes
# `for x in(...)`: we avoid the form) nor `[` (except after the keyword `in`).

_OPEN, _CLOSE = "{[(", "}])"


def _code(line: str) -> tuple[str, bool]:
    """The line with string literals blanked and comments removed (brackets inside strings
    do not count), and whether a heredoc starts on it."""
    out = []
    i = 0
    depth_stack: list[str] = []  # "s" in a string, "t" in a template interpolation
    while i < len(line):
        ch = line[i]
        in_string = bool(depth_stack) and depth_stack[-1] == "s"
        if in_string:
            if ch == "\\":
                out.append("__")
                i += 2
                continue
            if line.startswith(("${", "%{"), i):
                depth_stack.append("t")
                out.append("  ")
                i += 2
                continue
            if ch == '"':
                depth_stack.pop()
            out.append("_" if ch != '"' else '"')
            i += 1
            continue
        if ch == '"':
            depth_stack.append("s")
            out.append('"')
        elif ch == "}" and depth_stack and depth_stack[-1] == "t":
            depth_stack.pop()
            out.append(" ")
        elif ch == "{" and depth_stack and depth_stack[-1] == "t":
            depth_stack.append("t")  # an object constructor inside an interpolation
            out.append(" ")
        elif ch == "#" or line.startswith("//", i):
            break
        else:
            out.append(ch)
        i += 1
    code = "".join(out)
    return code, "<<" in code


def _net(code: str) -> int:
    return sum(code.count(c) for c in _OPEN) - sum(code.count(c) for c in _CLOSE)


_ASSIGN = re.compile(r"(?<![=!<>])=(?![=>])")


def fmt_problems(text: str) -> list[str]:
    """Where `text` differs from what `terraform fmt` would write, as 'line N: problem'."""
    problems: list[str] = []
    lines = text.split("\n")
    indents: list[int] = []
    chain: list[tuple[int, int, int]] = []  # (line number, lead width, column of "=")
    comments: list[tuple[int, int, int]] = []  # (line number, code width, column of "#")
    heredoc_end: str | None = None

    def close(run: list[tuple[int, int, int]], what: str) -> None:
        """A run of aligned cells ends: each must start one space after the widest lead."""
        if run:
            want = max(width for _, width, _ in run) + 1
            problems.extend(
                f"line {n}: {what} at column {col + 1}, fmt puts it at {want + 1}"
                for n, _, col in run
                if col != want
            )
        run.clear()

    def close_chain() -> None:
        close(chain, "'='")

    def close_comments() -> None:
        close(comments, "comment")

    for n, line in enumerate(lines, 1):
        if heredoc_end is not None:
            if line.strip() == heredoc_end:
                heredoc_end = None
            continue
        if line != line.rstrip():
            problems.append(f"line {n}: trailing whitespace")
        if not line.strip():
            close_chain()
            close_comments()
            continue
        code, heredoc = _code(line)
        if code.strip() and len(code) < len(line.rstrip()):  # a trailing comment
            comments.append((n, len(code.rstrip()), len(code)))
        else:
            close_comments()
        for spaced in re.finditer(r"\b([A-Za-z_][\w-]*) +([(\[])", code):
            if spaced.group(2) == "(" or spaced.group(1) != "in":
                problems.append(f"line {n}: fmt writes no space in {spaced.group(0)!r}")
        net = _net(code)
        if net < 0:
            closed = -net
            while closed > 0 and indents:
                if indents[-1] > closed:
                    indents[-1] -= closed
                    closed = 0
                else:
                    closed -= indents.pop()
        want = 2 * len(indents)
        if net > 0:
            indents.append(net)
        have = len(line) - len(line.lstrip(" "))
        if have != want or line.startswith("\t"):
            problems.append(f"line {n}: indented {have} spaces, fmt indents {want}")
        m = _ASSIGN.search(code)
        whole = (
            m is not None
            and m.start() > len(code) - len(code.lstrip())
            and (heredoc or _net(code[m.start() :]) == 0)
        )
        if m is not None and whole:
            eq = m.start()
            lead = len(code[:eq].rstrip())
            chain.append((n, lead, eq))
            if not code[eq + 1 :].startswith(" ") or code[eq + 2 : eq + 3] == " ":
                problems.append(f"line {n}: one space after '='")
        else:
            close_chain()
        if heredoc:
            hm = re.search(r"<<-?([A-Z]+)", line)
            heredoc_end = hm.group(1) if hm else None
    close_chain()
    close_comments()
    if not text.endswith("\n") or text.endswith("\n\n"):
        problems.append("the file must end with exactly one newline")
    return problems


# --- types and optional() defaults -------------------------------------------------------


class _TypeParser:
    """Terraform type expressions as python-hcl2 prints them:
    object({a = optional(string, "x"), b = list(number)}), map(...), any, ..."""

    def __init__(self, text: str) -> None:
        self.text = re.sub(r"^\$\{(.*)\}$", r"\1", text.strip(), flags=re.S)
        self.i = 0

    def ws(self) -> None:
        while self.i < len(self.text) and self.text[self.i] in " \n\t,":
            self.i += 1

    def word(self) -> str:
        self.ws()
        m = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*").match(self.text, self.i)
        assert m, f"type expected at {self.text[self.i : self.i + 30]!r}"
        self.i = m.end()
        return m.group(0)

    def expect(self, s: str) -> None:
        self.ws()
        assert self.text.startswith(s, self.i), f"{s!r} expected at {self.text[self.i :]!r}"
        self.i += len(s)

    def literal(self) -> Any:
        """An HCL literal default: a string, number, bool, null, [] or {}."""
        self.ws()
        dec = json.JSONDecoder()
        rest = self.text[self.i :]
        for token, value in (("null", None), ("true", True), ("false", False)):
            if rest.startswith(token):
                self.i += len(token)
                return value
        if rest.startswith("{}"):
            self.i += 2
            return {}
        value, end = dec.raw_decode(rest)
        self.i += end
        return value

    def parse(self) -> Any:
        name = self.word()
        if name in ("string", "number", "bool", "any"):
            return name
        if name in ("list", "set", "map"):
            self.expect("(")
            inner = self.parse()
            self.expect(")")
            return (name, inner)
        if name == "object":
            self.expect("({")
            fields: dict[str, tuple[Any, bool, Any]] = {}
            while True:
                self.ws()
                if self.text.startswith("})", self.i):
                    self.i += 2
                    return ("object", fields)
                key = self.word()
                self.expect("=")
                self.ws()
                if self.text.startswith("optional(", self.i):
                    self.i += len("optional(")
                    typ = self.parse()
                    self.ws()
                    default = None
                    if not self.text.startswith(")", self.i):
                        default = self.literal()
                    self.expect(")")
                    fields[key] = (typ, True, default)
                else:
                    fields[key] = (self.parse(), False, None)
        raise AssertionError(f"unknown type {name!r}")


def parse_type(text: str) -> Any:
    return _TypeParser(text).parse()


def convert(typ: Any, value: Any, where: str = "value") -> Any:
    """`value` converted to `typ` as Terraform does for a variable: optional attributes that
    are absent (or null) get their defaults, recursively; a missing required one fails."""
    if value is None or typ in ("string", "number", "bool", "any"):
        return value
    kind, inner = typ
    if kind in ("list", "set"):
        return [convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if kind == "map":
        return {k: convert(inner, v, f"{where}[{k}]") for k, v in value.items()}
    out = {}
    unknown = set(value) - set(inner)
    assert not unknown, f"{where}: unknown attributes {sorted(unknown)}"
    for key, (ftyp, optional, default) in inner.items():
        if value.get(key) is None:
            assert optional, f"{where}.{key} is required"
            out[key] = convert(ftyp, default, f"{where}.{key}")
        else:
            out[key] = convert(ftyp, value[key], f"{where}.{key}")
    return out


def variable_value(directory: Path, name: str, given: Any = None) -> Any:
    """The value variable `name` of a module takes when the caller passes `given` (None:
    nothing, i.e. the default)."""
    body = blocks(directory, "variable")[name]
    if given is None:
        assert "default" in body, f"{directory.name}: variable {name} is required"
        given = plain(body["default"])
    return convert(parse_type(body["type"]), given, name) if given is not None else None


# --- templates ---------------------------------------------------------------------------

_INTERP = re.compile(r"\$\{([^{}]*)\}")
_DIRECTIVE = re.compile(r"^%\{ (.+?) ~\}$")
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


class TemplateError(Exception):
    pass


def tf_str(value: Any) -> str:
    """A value interpolated into a template, as Terraform writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value
    raise TemplateError(f"cannot interpolate {type(value).__name__} {value!r}")


def jsonencode(value: Any) -> str:
    """Terraform's jsonencode: compact, whole numbers without a fraction, and <, >, & escaped
    as \\u003c, \\u003e, \\u0026 (as Go's encoding/json does)."""

    def norm(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, list):
            return [norm(x) for x in v]
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        return v

    text = json.dumps(norm(value), separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def lookup(path: str, scope: Mapping[str, Any]) -> Any:
    if not re.fullmatch(rf"{IDENT}(\.{IDENT})*", path):
        raise TemplateError(f"unsupported expression {path!r}")
    head, *rest = path.split(".")
    if head not in scope:
        raise TemplateError(f"unknown variable {head!r}")
    value = scope[head]
    for attr in rest:
        value = value[attr]
    return value


def expr(text: str, scope: Mapping[str, Any]) -> Any:
    text = text.strip()
    m = re.fullmatch(r"(jsonencode|base64encode)\((.*)\)", text)
    if m:
        value = lookup(m.group(2).strip(), scope)
        if m.group(1) == "jsonencode":
            return jsonencode(value)
        return base64.b64encode(value.encode()).decode()
    return lookup(text, scope)


def _condition(text: str, scope: Mapping[str, Any]) -> bool:
    m = re.fullmatch(r'(\S+) != ""', text)
    if m:
        return bool(lookup(m.group(1), scope) != "")
    value = lookup(text, scope)
    if not isinstance(value, bool):
        raise TemplateError(f"condition {text!r} is not a bool")
    return value


def _block_end(lines: list[str], i: int, opener: str, closer: str) -> tuple[int, int | None]:
    """Index of the matching closer after line i, and of an `else` at the same depth."""
    depth = 0
    middle = None
    for j in range(i + 1, len(lines)):
        m = _DIRECTIVE.match(lines[j])
        if not m:
            continue
        word = m.group(1).split()[0]
        if word == opener:
            depth += 1
        elif word == closer:
            if depth == 0:
                return j, middle
            depth -= 1
        elif word == "else" and depth == 0 and opener == "if":
            middle = j
    raise TemplateError(f"line {i + 1}: no {closer}")


def _render_lines(lines: list[str], scope: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _DIRECTIVE.match(line)
        if m:
            words = m.group(1)
            if words.startswith("for "):
                fm = re.fullmatch(rf"for ({IDENT}) in (\S+)", words)
                if not fm:
                    raise TemplateError(f"unsupported directive {words!r}")
                end, _ = _block_end(lines, i, "for", "endfor")
                for item in lookup(fm.group(2), scope):
                    out += _render_lines(lines[i + 1 : end], {**scope, fm.group(1): item})
                i = end + 1
                continue
            if words.startswith("if "):
                end, middle = _block_end(lines, i, "if", "endif")
                then = lines[i + 1 : middle if middle is not None else end]
                other = lines[middle + 1 : end] if middle is not None else []
                out += _render_lines(then if _condition(words[3:], scope) else other, scope)
                i = end + 1
                continue
            raise TemplateError(f"unexpected directive {words!r}")
        if "%{" in line:
            raise TemplateError(f"directive not alone on its line: {line!r}")
        out.append(_INTERP.sub(lambda mm: tf_str(expr(mm.group(1), scope)), line))
        i += 1
    return out


def render(path: Path, variables: Mapping[str, Any]) -> str:
    """Render a Terraform template the way templatefile() does (for the supported subset)."""
    return "\n".join(_render_lines(path.read_text(encoding="utf-8").split("\n"), variables))


def template_variables(path: Path) -> set[str]:
    """Top-level names a template reads (loop variables excluded)."""
    text = path.read_text(encoding="utf-8")
    loop_vars = set(re.findall(rf"%\{{ for ({IDENT}) in", text))
    names = set()
    for e in re.findall(r"\$\{([^{}]*)\}", text) + re.findall(r"%\{ (.+?) ~\}", text):
        for m in re.finditer(rf"(?<![.\w\"]){IDENT}", e):
            names.add(m.group(0))
    keywords = {"for", "in", "if", "else", "endif", "endfor", "jsonencode", "base64encode"}
    return names - keywords - loop_vars


def top_level_keys(obj_text: str) -> set[str]:
    """Keys of an HCL object constructor `{a = ..., b = ...}` as python-hcl2 prints it."""
    keys: set[str] = set()
    depth = 0
    start = 1
    in_string = False
    for i, ch in enumerate(obj_text):
        if ch == '"' and obj_text[i - 1] != "\\":
            in_string = not in_string
        if in_string:
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if (ch == "," and depth == 1) or (depth == 0 and ch == "}"):
            part = obj_text[start:i].strip()
            if part:
                keys.add(part.split("=", 1)[0].strip())
            start = i + 1
        if depth == 0 and ch == "}":
            break
    return keys


# --- module READMEs ----------------------------------------------------------------------


def _type_summary(body: Mapping[str, Any]) -> str:
    text = re.sub(
        r"\s+", " ", re.sub(r"^\$\{(.*)\}$", r"\1", str(body.get("type", "any")), flags=re.S)
    )
    for kind in ("object", "list(object", "map(object"):
        if text.startswith(kind + "("):
            return kind + (")" if kind != "object" else "")
    return text


def _default_summary(body: Mapping[str, Any]) -> str:
    if "default" not in body:
        return "required"
    value = plain(body["default"])
    if isinstance(value, str) and value.startswith("${"):
        return f"`{value[2:-1]}`"
    return f"`{json.dumps(value)}`"


def readme_tables(directory: Path) -> str:
    """The Inputs and Outputs tables a module's README ends with, from its .tf files."""

    def cell(text: Any) -> str:
        return str(unq(text)).replace("|", "\\|")

    lines = ["## Inputs", "", "| name | type | default | description |", "|---|---|---|---|"]
    for name, body in blocks(directory, "variable").items():
        desc = cell(body.get("description", ""))
        lines.append(f"| `{name}` | `{_type_summary(body)}` | {_default_summary(body)} | {desc} |")
    lines += ["", "## Outputs", "", "| name | description |", "|---|---|"]
    for name, body in blocks(directory, "output").items():
        lines.append(f"| `{name}` | {cell(body.get('description', ''))} |")
    return "\n".join(lines) + "\n"


def write_readme_tables(directory: Path) -> None:
    """Replace everything from '## Inputs' on in directory/README.md with readme_tables()."""
    readme = directory / "README.md"
    text = readme.read_text(encoding="utf-8")
    head = text.split("## Inputs", 1)[0].rstrip()
    readme.write_text(f"{head}\n\n{readme_tables(directory)}", encoding="utf-8")


if __name__ == "__main__":  # python -m tests.unit.tfcheck terraform/modules/aws-node ...
    import sys

    for arg in sys.argv[1:]:
        write_readme_tables(Path(arg))
