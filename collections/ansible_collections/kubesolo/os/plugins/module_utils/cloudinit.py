# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Parser and validator of KubeSolo OS cloud-init files (a strict YAML subset, docs/cloud-init.md).

The boot side (roles/init/files/cloud-init.awk, busybox awk) implements the SAME algorithm: both
turn a file into the same flat node list and the same diagnostics (level, key, line), against the
same schema (files/cloud-init-schema.yml). Keep the two in step; tests/test_cloudinit.py runs both
on every fixture and asserts that they agree.

Flat form, one record per line (values escaped: backslash, newline, tab as \\\\, \\n, \\t):
  N<TAB>kind<TAB>line<TAB>path<TAB>value   kind: M mapping, L list, Z null (`key:` and nothing),
                                           P plain, Q quoted, B block (`|`) scalar
  D<TAB>level<TAB>line<TAB>key<TAB>message level: ERROR or WARN

Input is bytes (a str is encoded as UTF-8): a file larger than the schema's max_bytes is refused
with one error at line 1 and nothing else; a UTF-8 byte order mark at the start is skipped; a line
that is not valid UTF-8 is a syntax error on that line. Every step is linear in the file's size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

KEY_RE = re.compile(r"^[A-Za-z0-9_./-]+:( |$)")
BLOCK_RE = re.compile(r"^\|(-?)( +#.*)?$")
INDEX_RE = re.compile(r"\[[0-9]+\]")
BOM = b"\xef\xbb\xbf"
# Bytes that are not UTF-8 decode (surrogateescape) to these lone surrogates.
BAD_BYTE_RE = re.compile("[\udc80-\udcff]")
NOT_UTF8 = "not valid UTF-8 text (save the file as UTF-8)"
SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
CONTAINER_TYPES = ("map", "map_any", "list")
VALUE_TYPES = (
    "string", "text", "secret", "hostname", "host", "ifname", "mac", "bool", "ipv4", "cidr4", "url",
    "noproxy", "sshkey", "pem", "sysctl_value", "flag", "path", "mode",
)


@dataclass
class Node:
    kind: str
    line: int
    path: str
    value: str = ""
    parent: str = ""  # path of the container holding the node ("" at the top level)


@dataclass
class Diagnostic:
    level: str  # ERROR or WARN
    line: int
    key: str
    message: str

    def text(self, source: str = "cloud-init") -> str:
        return f"{source} line {self.line}: {self.key or '(top level)'}: {self.message}"


@dataclass
class Result:
    nodes: list[Node] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.level == "ERROR"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.level == "WARN"]

    @property
    def valid(self) -> bool:
        return not self.errors

    def flat(self) -> list[str]:
        lines = [f"N\t{n.kind}\t{n.line}\t{n.path}\t{escape(n.value)}" for n in self.nodes]
        lines += [f"D\t{d.level}\t{d.line}\t{d.key}\t{d.message}" for d in self.diagnostics]
        return lines

    def data(self) -> Any:
        """The nodes as Python data (mappings, lists, strings); None when invalid."""
        if not self.valid:
            return None
        return to_data(self.nodes)


class ParseError(Exception):
    def __init__(self, line: int, key: str, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.key = key
        self.message = message


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


# ---------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------

def child_path(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def parse_scalar(text: str, line: int, key: str, in_flow: bool = False) -> tuple[str, str]:
    """(kind P|Q, value) of an inline scalar; raises ParseError."""
    first = text[:1]
    if first in ('"', "'"):
        out = []
        i = 1
        closed = False
        while i < len(text):
            c = text[i]
            if first == "'" and c == "'":
                if text[i + 1:i + 2] == "'":
                    out.append("'")
                    i += 2
                    continue
                closed = True
                break
            if first == '"' and c == '"':
                closed = True
                break
            if first == '"' and c == "\\":
                nxt = text[i + 1:i + 2]
                mapping = {"\\": "\\", '"': '"', "n": "\n", "t": "\t"}
                if nxt not in mapping:
                    raise ParseError(line, key, f"unsupported escape '\\{nxt}' in a double-quoted value")
                out.append(mapping[nxt])
                i += 2
                continue
            out.append(c)
            i += 1
        if not closed:
            raise ParseError(line, key, "unterminated quoted value (quotes must close on the same line)")
        rest = text[i + 1:]
        if rest.strip(" \t") and not re.match(r"^ +#", rest):
            raise ParseError(line, key, "unexpected text after the closing quote")
        return "Q", "".join(out)
    if first and first in "&*!%@`{|>":
        raise ParseError(line, key, f"a value starting with '{first}' is not supported: quote the value")
    if in_flow and first == "[":
        raise ParseError(line, key, "nested lists are not supported")
    if text == "-" or text.startswith("- "):
        raise ParseError(line, key, "a value starting with '- ' is not supported: quote the value")
    pos = text.find(" #")
    if pos >= 0:
        text = text[:pos]
    text = text.rstrip(" ")
    if ": " in text or text.endswith(":"):
        raise ParseError(line, key, "': ' inside a plain value: quote the value")
    return "P", text


class _Parser:
    def __init__(self, text: str) -> None:
        self.lines = text.split("\n")
        if self.lines and self.lines[-1] == "":
            self.lines.pop()
        self.nodes: list[Node] = []
        # Stack of open containers: [indent of children, kind M|L, path, next list index].
        self.stack: list[list[Any]] = [[0, "M", "", 0]]
        self.seen: set[tuple[str, str]] = set()
        self.pending: tuple[str, int, int, str] | None = None  # path, indent, line, parent
        self.block: dict[str, Any] | None = None
        self.content_seen = False

    def emit(self, kind: str, line: int, path: str, value: str = "", parent: str = "") -> None:
        self.nodes.append(Node(kind, line, path, value, parent))

    def finish_block(self) -> None:
        block = self.block
        if block is None:
            return
        lines = list(block["lines"])
        while lines and lines[-1] == "":
            lines.pop()
        value = "\n".join(lines)
        if lines and not block["strip"]:
            value += "\n"
        self.emit("B", block["line"], block["path"], value, block["parent_path"])
        self.block = None

    def run(self) -> None:
        for number, raw in enumerate(self.lines, start=1):
            self.line(number, raw[:-1] if raw.endswith("\r") else raw)
        if self.block is not None:
            self.finish_block()
        if self.pending is not None:
            path, line = self.pending[0], self.pending[2]
            self.emit("Z", line, path, "", self.pending[3])
            self.pending = None

    def line(self, number: int, text: str) -> None:
        if BAD_BYTE_RE.search(text):
            raise ParseError(number, "", NOT_UTF8)
        spaces = len(text) - len(text.lstrip(" "))
        if self.block is not None:
            block = self.block
            if text.strip(" ") == "":
                block["lines"].append(text[block["indent"]:] if block["indent"] else "")
                return
            if block["indent"] is None and spaces > block["parent"]:
                block["indent"] = spaces
            if block["indent"] is not None and spaces >= block["indent"]:
                block["lines"].append(text[block["indent"]:])
                return
            self.finish_block()
        stripped = text.strip(" \t")
        if stripped == "" or stripped.startswith("#"):
            return
        if text == "---" and not self.content_seen:
            return
        self.content_seen = True
        key_here = self.stack[-1][2]
        if text[spaces:spaces + 1] == "\t":
            raise ParseError(number, self.pending[0] if self.pending else key_here,
                             "tab character in the indentation (use spaces)")
        if text == "---" or text == "...":
            raise ParseError(number, key_here, "only one YAML document is supported")
        content = text[spaces:].rstrip(" \t")
        if self.pending is not None:
            path, indent, line, parent = self.pending
            self.pending = None
            if spaces == indent + 2:
                kind = "L" if content == "-" or content.startswith("- ") else "M"
                self.emit(kind, line, path, "", parent)
                self.stack.append([spaces, kind, path, 0])
            elif spaces > indent:
                raise ParseError(number, path, f"indent nested entries by exactly 2 spaces (expected {indent + 2})")
            else:
                self.emit("Z", line, path, "", parent)
        while len(self.stack) > 1 and self.stack[-1][0] > spaces:
            self.stack.pop()
        top = self.stack[-1]
        if top[0] != spaces:
            raise ParseError(number, top[2], f"unexpected indentation of {spaces} spaces (expected {top[0]})")
        if top[1] == "M":
            self.map_entry(number, top, content, spaces)
        else:
            self.list_item(number, top, content, spaces)

    def map_entry(self, number: int, top: list[Any], content: str, indent: int) -> None:
        match = KEY_RE.match(content)
        if not match:
            if content == "-" or content.startswith("- "):
                raise ParseError(number, top[2], "a list item where a 'key: value' entry is expected")
            raise ParseError(number, top[2], "expected 'key: value'")
        key = content[:content.index(":")]
        path = child_path(top[2], key)
        if (top[2], key) in self.seen:
            raise ParseError(number, path, "duplicate key")
        self.seen.add((top[2], key))
        self.value(number, path, content[len(key) + 1:].lstrip(" "), indent, top[2])

    def list_item(self, number: int, top: list[Any], content: str, indent: int) -> None:
        if not (content == "-" or content.startswith("- ")):
            raise ParseError(number, top[2], "expected a list item ('- ...')")
        path = f"{top[2]}[{top[3]}]"
        top[3] += 1
        rest = content[2:]
        if rest == "" or rest.startswith("#"):
            raise ParseError(number, path, "empty list item")
        if rest.startswith(" "):
            raise ParseError(number, path, "put exactly one space after '-'")
        if KEY_RE.match(rest):
            self.emit("M", number, path, "", top[2])
            entry = [indent + 2, "M", path, 0]
            self.stack.append(entry)
            self.map_entry(number, entry, rest, indent + 2)
            return
        self.value(number, path, rest, indent, top[2])

    def value(self, number: int, path: str, rest: str, indent: int, parent: str) -> None:
        if rest == "" or rest.startswith("#"):
            self.pending = (path, indent, number, parent)
            return
        block = BLOCK_RE.match(rest)
        if block:
            self.block = {"path": path, "parent": indent, "parent_path": parent, "line": number,
                          "strip": block.group(1) == "-", "indent": None, "lines": []}
            return
        if rest.startswith(">"):
            raise ParseError(number, path, "folded block values ('>') are not supported: use '|'")
        if rest.startswith("["):
            end = rest.find("]")
            if end < 0:
                raise ParseError(number, path, "unterminated flow list ('[' without ']')")
            after = rest[end + 1:]
            if after.strip(" \t") and not re.match(r"^ +#", after):
                raise ParseError(number, path, "unexpected text after the closing ']'")
            inner = rest[1:end]
            self.emit("L", number, path, "", parent)
            if inner.strip(" ") == "":
                return
            for index, item in enumerate(inner.split(",")):
                item = item.strip(" ")
                item_path = f"{path}[{index}]"
                if item == "":
                    raise ParseError(number, item_path, "empty item in a flow list")
                kind, value = parse_scalar(item, number, item_path, in_flow=True)
                self.emit(kind, number, item_path, value, path)
            return
        kind, value = parse_scalar(rest, number, path)
        self.emit(kind, number, path, value, parent)


def parse(text: str) -> tuple[list[Node], Diagnostic | None]:
    """Nodes of a file, and its first syntax error (parsing stops there)."""
    parser = _Parser(text)
    try:
        parser.run()
    except ParseError as exc:
        return parser.nodes, Diagnostic("ERROR", exc.line, exc.key, exc.message)
    return parser.nodes, None


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

def _is_ipv4(value: str) -> bool:
    parts = value.split(".")
    if len(parts) != 4:
        return False
    for part in parts:
        if not re.match(r"^[0-9]+$", part) or len(part) > 3 or (len(part) > 1 and part[0] == "0"):
            return False
        if int(part) > 255:
            return False
    return True


def _is_hostname(value: str, limit: int = 253) -> bool:
    if value == "" or len(value) > limit or not re.match(r"^[a-z0-9.-]+$", value):
        return False
    for label in value.split("."):
        if label == "" or len(label) > 63 or label.startswith("-") or label.endswith("-"):
            return False
    return True


def check_value(kind: str, type_name: str, value: str, schema: dict[str, Any]) -> str:
    """'' when value is a valid TYPE_NAME, else what is wrong (never the value: it may be secret)."""
    multi = "\n" in value
    if type_name != "text" and type_name != "pem" and multi:
        return "must be a single line"
    if value == "" and type_name != "bool":
        return "must not be empty"
    if type_name in ("string", "text", "secret", "sysctl_value"):
        return ""
    if type_name == "hostname":
        # The node name: the kernel's limit (sethostname, HOST_NAME_MAX) is 64 characters.
        return "" if _is_hostname(value, 64) else "not a lowercase RFC 1123 host name of at most 64 characters"
    if type_name == "host":
        return "" if _is_ipv4(value) or _is_hostname(value.lower()) else "not a host name or IPv4 address"
    if type_name == "ifname":
        ok = re.match(r"^[A-Za-z0-9_.-]+$", value) and len(value) <= 15
        return "" if ok else "not an interface name (at most 15 of A-Z a-z 0-9 _ . -)"
    if type_name == "mac":
        ok = re.match(r"^[0-9A-Fa-f][0-9A-Fa-f](:[0-9A-Fa-f][0-9A-Fa-f])+$", value) and len(value) == 17
        return "" if ok else "not a MAC address (xx:xx:xx:xx:xx:xx)"
    if type_name == "bool":
        return "" if kind == "P" and value in ("true", "false") else "must be true or false (unquoted)"
    if type_name == "ipv4":
        return "" if _is_ipv4(value) else "not an IPv4 address"
    if type_name == "cidr4":
        address, prefix = value.partition("/")[::2]
        ok = (_is_ipv4(address) and re.match(r"^[0-9]+$", prefix) is not None and len(prefix) <= 2
              and (prefix == "0" or prefix[0] != "0") and 1 <= int(prefix) <= 32)
        return "" if ok else "not an IPv4 address with prefix (10.0.0.5/24)"
    if type_name == "url":
        return "" if re.match(r"^https?://[^ \t]+$", value) else "not an http:// or https:// URL"
    if type_name == "noproxy":
        return "" if re.match(r"^[^ \t,]+$", value) else "must not contain spaces or commas"
    if type_name == "sshkey":
        words = value.split(" ")
        ok = (len(words) >= 2 and words[0] in SSH_KEY_TYPES and re.match(r"^[A-Za-z0-9+/=]+$", words[1]) is not None
              and len(words[1]) >= 16)
        return "" if ok else "not an OpenSSH public key ('ssh-ed25519 AAAA... comment')"
    if type_name == "pem":
        lines = value.split("\n")
        ok = (lines[0] == "-----BEGIN CERTIFICATE-----" and "-----END CERTIFICATE-----" in lines[1:])
        return "" if ok else "not a PEM certificate (-----BEGIN CERTIFICATE----- ... -----END CERTIFICATE-----)"
    if type_name == "flag":
        return check_flag(value, schema["kubesolo_flags"])
    if type_name == "path":
        if not re.match(r"^/[A-Za-z0-9._@+/-]*[A-Za-z0-9._@+-]$", value) or "//" in value or "/./" in value \
                or "/../" in value or value.endswith("/.") or value.endswith("/.."):
            return "not a clean absolute path"
        for directory in schema["persistent_dirs"]:
            if value.startswith(directory + "/"):
                return ""
        return "must be below one of " + " ".join(schema["persistent_dirs"])
    if type_name == "mode":
        return "" if re.match(r"^0?[0-7][0-7][0-7]$", value) else "not an octal mode ('0644')"
    return f"unknown type {type_name}"


def load_schema(data: dict[str, Any], flags: dict[str, Any], persistent_dirs: list[str]) -> dict[str, Any]:
    """Checks and indexes a schema loaded from files/cloud-init-schema.yml, with KubeSolo's flag table
    loaded from files/kubesolo-flags.yml (the items of kubesolo.flags are checked against it) and the
    directories write_files may write below: the mount points of the boot contract's bind mounts
    (files/boot-contract.yml, bind_mounts[].dest), given by the caller."""
    dirs = list(persistent_dirs)
    bad = [d for d in dirs if not isinstance(d, str) or not d.startswith("/") or d == "/" or d.endswith("/")]
    if not dirs or bad:
        raise ValueError(f"persistent_dirs must be absolute directories (the boot contract's bind mounts), got {dirs}")
    keys: dict[str, dict[str, Any]] = {}
    for entry in data["keys"]:
        if entry["type"] not in CONTAINER_TYPES + VALUE_TYPES:
            raise ValueError(f"schema key {entry['key']}: unknown type {entry['type']}")
        keys[entry["key"]] = entry
    return {"keys": keys, "persistent_dirs": dirs, "max_bytes": int(data["max_bytes"]),
            "mandatory_no_proxy": list(data.get("mandatory_no_proxy", [])),
            "rules": load_rules(data.get("rules", []), keys),
            "kubesolo_flags": load_flags(flags)}


# The cross-key rules of the schema (its `rules:`; cloud-init.awk applies the same ones, rendered as R rows).
RULES = ("exclusive", "at_most_one_without", "required", "required_unless", "forbidden_if", "together")


def load_rules(data: list[dict[str, Any]], keys: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Checks the schema's cross-key rules: a known rule on a mapping key of the schema, naming its keys."""
    rules: list[dict[str, Any]] = []
    for entry in data:
        mapping, rule, names = entry.get("mapping"), entry.get("rule"), entry.get("keys")
        where = f"schema rule {rule!r} on {mapping!r}"
        if rule not in RULES:
            raise ValueError(f"{where}: unknown rule (known: {', '.join(RULES)})")
        if keys.get(mapping, {}).get("type") != "map":
            raise ValueError(f"{where}: not a mapping key of the schema")
        if not names or any(f"{mapping}.{name}" not in keys for name in names) or not entry.get("message"):
            raise ValueError(f"{where}: needs keys of that mapping and a message")
        if (rule in ("required_unless", "forbidden_if")) != ("if_key" in entry):
            raise ValueError(f"{where}: if_key and if_value belong to required_unless and forbidden_if only")
        rules.append({"mapping": mapping, "rule": rule, "keys": [str(n) for n in names],
                      "if_key": str(entry.get("if_key", "")), "if_value": str(entry.get("if_value", "")),
                      "message": str(entry["message"]),
                      "lists": [keys[f"{mapping}.{n}"]["type"] == "list" for n in names]})
    return rules


def check_rules(nodes: list[Node], rules: list[dict[str, Any]], hidden: set[str]) -> list[Diagnostic]:
    """The schema's cross-key rules, on every mapping node not below a skipped one (see files/cloud-init-schema.yml)."""
    out: list[Diagnostic] = []
    by_path = {n.path: n for n in nodes}
    without_seen: set[int] = set()
    for node in nodes:
        if node.kind != "M" or node.path in hidden:
            continue
        norm = INDEX_RE.sub("[]", node.path)
        p = node.path
        for index, rule in enumerate(rules):
            if rule["mapping"] != norm:
                continue
            paths = [f"{p}.{name}" for name in rule["keys"]]
            # (path, given): a key of type list is given only with at least one item.
            keyed = [(path, (path + "[0]" if rule["lists"][i] else path) in by_path) for i, path in enumerate(paths)]
            given = [ok for _path, ok in keyed]
            kind, message = rule["rule"], rule["message"]
            switch = by_path.get(f"{p}.{rule['if_key']}")
            switched = switch is not None and switch.kind == "P" and switch.value == rule["if_value"]
            if kind == "exclusive" and sum(given) > 1:
                out.append(Diagnostic("ERROR", node.line, p, message))
            elif kind == "at_most_one_without" and not any(given):
                if index in without_seen:
                    out.append(Diagnostic("ERROR", node.line, p, message))
                without_seen.add(index)
            elif kind == "required" or (kind == "required_unless" and not switched):
                for path, ok in keyed:
                    if not ok:
                        line = by_path[path].line if path in by_path else node.line
                        out.append(Diagnostic("ERROR", line, path, message))
            elif kind == "forbidden_if" and switched:
                out += [Diagnostic("ERROR", by_path[path].line, path, message) for path in paths if path in by_path]
            elif kind == "together" and any(given) and not all(given):
                line = by_path[paths[given.index(True)]].line
                out += [Diagnostic("ERROR", line, path, message) for path, ok in keyed if not ok]
    return out


# ---------------------------------------------------------------------------------------------
# KubeSolo's flags (files/kubesolo-flags.yml): the items of kubesolo.flags. Same rules as the awk
# side (check_flag, check_flag_repeats) and as stage 90's argument builder (ksi_kubesolo_args).
# ---------------------------------------------------------------------------------------------

FLAG_TYPES = ("bool", "string", "int")
FLAG_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def load_flags(data: dict[str, Any]) -> dict[str, Any]:
    """Checks and indexes KubeSolo's flag table (files/kubesolo-flags.yml)."""
    table: dict[str, dict[str, Any]] = {}
    for entry in data["kubesolo_flags"]:
        if entry["type"] not in FLAG_TYPES or not FLAG_NAME_RE.match(entry["name"]):
            raise ValueError(f"KubeSolo flag {entry.get('name')!r}: bad name or type {entry.get('type')!r}")
        table[entry["name"]] = entry
    return {"table": table,
            "true": [str(w).lower() for w in data["bool_true"]],
            "false": [str(w).lower() for w in data["bool_false"]],
            "known": ", ".join("--" + n for n, e in table.items() if e["boot"])}


def flag_base(value: str, flags: dict[str, Any]) -> str:
    """The table name an item sets (--no-x sets x); '' when the item names no known flag."""
    name = value[2:].partition("=")[0] if value.startswith("--") else ""
    if name in flags["table"]:
        return name
    if name.startswith("no-") and flags["table"].get(name[3:], {}).get("type") == "bool":
        return name[3:]
    return ""


def check_flag(value: str, flags: dict[str, Any]) -> str:
    """'' when value is one argument KubeSolo accepts at boot, else what is wrong (never the value)."""
    name, equals, given = value[2:].partition("=") if value.startswith("--") else ("", "", "")
    if not FLAG_NAME_RE.match(name):
        return "not a KubeSolo flag (--name or --name=value)"
    base = flag_base(value, flags)
    if base == "":
        return f"unknown KubeSolo flag --{name}; known flags: {flags['known']}"
    entry = flags["table"][base]
    if not entry["boot"]:
        return f"--{name} makes KubeSolo print and exit: not allowed at boot"
    if entry["type"] == "bool":
        if base != name and equals:
            return f"--{name} takes no value"
        if equals and given.lower() not in flags["true"] + flags["false"]:
            return f"--{name} is a boolean: write --{name}, --no-{name} or --{name}=true|false"
        return ""
    if not equals:
        return f"--{name} needs a value: write --{name}=VALUE"
    if entry["type"] == "int" and not re.match(r"^-?[0-9]+$", given):
        return f"--{name} needs a whole number"
    return ""


def check_flag_repeats(nodes: list[Node], flags: dict[str, Any], excluded: set[str]) -> list[Diagnostic]:
    """An ERROR for each item of kubesolo.flags that sets a flag an earlier item set already; nodes in
    excluded (skipped, or below a skipped node) are passed over."""
    out: list[Diagnostic] = []
    seen: set[str] = set()
    for node in nodes:
        if not re.match(r"^kubesolo\.flags\[[0-9]+\]$", node.path) or node.path in excluded:
            continue
        if node.kind not in ("P", "Q") or check_flag(node.value, flags):
            continue
        base = flag_base(node.value, flags)
        if base in seen:
            out.append(Diagnostic("ERROR", node.line, node.path, f"--{base} is given more than once"))
        seen.add(base)
    return out


def validate(nodes: list[Node], schema: dict[str, Any]) -> list[Diagnostic]:
    keys = schema["keys"]
    out: list[Diagnostic] = []
    # A node below a skipped node (unknown key, wrong kind) is skipped too: its parent says so.
    skipped: set[str] = set()
    hidden: set[str] = set()
    map_any = [k for k, c in keys.items() if c["type"] == "map_any" and k + ".*" in keys]
    for node in nodes:
        if node.parent and (node.parent in skipped or node.parent in hidden):
            hidden.add(node.path)
            continue
        norm = INDEX_RE.sub("[]", node.path)
        entry = keys.get(norm)
        if entry is None:
            for key in map_any:
                if norm.startswith(key + "."):
                    entry = keys[key + ".*"]
                    if not re.match(keys[key].get("key_pattern", "^.+$"), norm[len(key) + 1:]):
                        entry = {"type": "badname"}
                    break
        if entry is None:
            out.append(Diagnostic("WARN", node.line, node.path, "unknown key: ignored"))
            skipped.add(node.path)
            continue
        if entry["type"] == "badname":
            out.append(Diagnostic("ERROR", node.line, node.path, "invalid name"))
            skipped.add(node.path)
            continue
        type_name = entry["type"]
        if type_name in ("map", "map_any"):
            if node.kind not in ("M", "Z"):
                out.append(Diagnostic("ERROR", node.line, node.path, "must be a mapping ('key: value' entries)"))
                skipped.add(node.path)
            continue
        if type_name == "list":
            if node.kind not in ("L", "Z"):
                out.append(Diagnostic("ERROR", node.line, node.path, "must be a list"))
                skipped.add(node.path)
            continue
        if node.kind in ("M", "L"):
            out.append(Diagnostic("ERROR", node.line, node.path, "must be a single value, not a mapping or list"))
            skipped.add(node.path)
            continue
        if node.kind == "Z":
            out.append(Diagnostic("ERROR", node.line, node.path, "has no value"))
            continue
        message = check_value(node.kind, type_name, node.value, schema)
        if message:
            out.append(Diagnostic("ERROR", node.line, node.path, message))
    # Rules that involve several keys: data of the schema (its `rules:`).
    out += check_rules(nodes, schema["rules"], hidden)
    out += check_flag_repeats(nodes, schema["kubesolo_flags"], skipped | hidden)
    out.sort(key=lambda d: d.line)
    return out


def check(content: bytes | str, schema: dict[str, Any]) -> Result:
    """Parse and validate a cloud-init file (its bytes) against a schema from load_schema()."""
    data = content if isinstance(content, bytes) else content.encode("utf-8", "surrogateescape")
    if len(data) > schema["max_bytes"]:
        message = f"the file is larger than the maximum of {schema['max_bytes']} bytes (docs/cloud-init.md)"
        return Result([], [Diagnostic("ERROR", 1, "", message)])
    if data.startswith(BOM):
        data = data[len(BOM):]
    nodes, error = parse(data.decode("utf-8", "surrogateescape"))
    if error is not None:
        return Result(nodes, [error])
    return Result(nodes, validate(nodes, schema))


def to_data(nodes: list[Node]) -> Any:
    """Python data of a node list (paths are built by the parser, so they nest cleanly)."""
    root: dict[str, Any] = {}
    containers: dict[str, Any] = {"": root}
    for node in nodes:
        if node.path.endswith("]"):
            parent = containers[node.path[:node.path.rindex("[")]]
            key: Any = None
        else:
            parent_path = max((p for p in containers if p == "" or node.path.startswith(p + ".")), key=len)
            parent = containers[parent_path]
            key = node.path[len(parent_path) + 1:] if parent_path else node.path
        value: Any
        if node.kind == "M":
            value = {}
            containers[node.path] = value
        elif node.kind == "L":
            value = []
            containers[node.path] = value
        elif node.kind == "Z":
            value = None
        else:
            value = node.value
        if key is None:
            parent.append(value)
        else:
            parent[key] = value
    return root
