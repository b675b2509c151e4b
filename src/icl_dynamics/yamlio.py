"""Reading YAML configs and sweep specs without surprises, hangs or blow-ups.

:func:`read_text` reads only a regular file of bounded size: a FIFO, device, folder, socket or /proc file
is refused without a blocking read. :func:`load_yaml` parses with a PyYAML safe loader changed in three ways:

* YAML 1.2 scalars where YAML 1.1 surprises people: integers are decimal (``1_000`` allowed); a leading
  zero (``010``, YAML 1.1 octal 8) or ``0x``/``0o``/``0b`` is *refused* ("write 10 or '010'") rather than
  guessed; ``1:30`` stays the string "1:30" (no base 60); ``1e-3`` and ``.5`` are floats; booleans are
  only true/false (``yes``/``no``/``on``/``off`` stay strings); ``2024-01-01`` stays a string; ``<<``
  merge keys still work.
* Limits against hostile input, checked while composing, before any Python recursion or expansion:
  :data:`MAX_DEPTH`, :data:`MAX_ALIASES`, :data:`MAX_NODES` (counting every alias as the size of what
  it expands to, so a 300-byte "billion laughs" stops at once), :data:`MAX_INT_DIGITS`.
* Strictness: a duplicate mapping key is refused by name and line; only the JSON-like tags
  ``!!str !!int !!float !!bool !!null !!seq !!map`` are accepted, and a value they cannot hold
  (``!!int 4.5``) is one error line, never ValueError or TypeError.

Every problem becomes one :class:`~icl_dynamics.errors.ConfigError` line with user text clipped.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import stat
from collections.abc import Hashable
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

try:
    from yaml._yaml import CParser  # libyaml
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    CParser = None

from .errors import ConfigError
from .fsio import clip, file_kind, os_reason

MAX_BYTES = 1_000_000  # a config or sweep spec is a few kB; pure-Python PyYAML parses ~0.5 MB/s
MAX_DEPTH = 50  # nested collections; Python's recursion limit would allow ~300
MAX_ALIASES = 100  # uses of *alias in one document
MAX_NODES = 100_000  # values in the document with every alias expanded
MAX_INT_DIGITS = 100  # digits of an integer (Python refuses above 4300 with ValueError)

_T = "tag:yaml.org,2002:"
_DECIMAL = re.compile(r"[-+]?[0-9]+(?:_[0-9]+)*")
_RADIX = re.compile(r"[-+]?0[xXoObB][0-9a-fA-F_]*")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+(?:_[0-9]+)*|[0-9]+(?:_[0-9]+)*(?:\.(?:[0-9]+(?:_[0-9]+)*)?)?)"
                    r"(?:[eE][-+]?[0-9]+)?")
_INF_NAN = re.compile(r"[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)")
_TRUE, _FALSE = ("true", "True", "TRUE"), ("false", "False", "FALSE")


class YamlRefused(yaml.MarkedYAMLError):
    """Valid YAML that this loader refuses (a limit, a duplicate key, an ambiguous number)."""

    def __init__(self, problem: str, node_or_mark: Any) -> None:
        mark = getattr(node_or_mark, "start_mark", node_or_mark)
        super().__init__(problem=problem, problem_mark=mark)


class _LimitedComposer(Composer):
    """PyYAML's composer, counting depth, aliases and expanded size as it goes."""

    def __init__(self) -> None:
        super().__init__()
        self._frames = [0]  # per open node: the expanded size of its children so far
        self._sizes: dict[int, int] = {}  # id(node) -> expanded size, for aliases
        self._aliases = 0
        self._nodes = 0

    def _count(self, n: int, mark: Any) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            raise YamlRefused(f"more than {MAX_NODES} values once aliases are expanded", mark)

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:
                self._aliases += 1
                if self._aliases > MAX_ALIASES:
                    raise YamlRefused(f"more than {MAX_ALIASES} aliases", event.start_mark)
                size = self._sizes.get(id(target))
                if size is None:  # the anchor is still open: a node containing itself
                    raise YamlRefused(f"alias *{clip(event.anchor, 40)} refers to a node that contains it",
                                      event.start_mark)
                self._count(size, event.start_mark)
                self._frames[-1] += size
            return super().compose_node(parent, index)  # an undefined alias raises there
        if len(self._frames) > MAX_DEPTH:
            raise YamlRefused(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        self._count(1, event.start_mark)
        self._frames.append(0)
        try:
            node = super().compose_node(parent, index)
        finally:
            children = self._frames.pop()
        self._sizes[id(node)] = 1 + children
        self._frames[-1] += 1 + children
        return node


def _tag_name(tag: str) -> str:
    return clip("!!" + tag[len(_T):] if tag.startswith(_T) else tag, 40)


class _StrictConstructor(SafeConstructor):
    """SafeConstructor with YAML 1.2 scalars, no duplicate keys, and only JSON-like tags."""

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag == _T + "merge":
                    continue
                key = self.construct_object(key_node)
                if isinstance(key, Hashable):
                    if key in seen:
                        raise YamlRefused(f"duplicate key '{clip(key, 40)}'", key_node)
                    seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Node) -> int:
        raw = self.construct_scalar(node)
        if _DECIMAL.fullmatch(raw):
            digits = raw.replace("_", "").lstrip("+-")
            if len(digits) > MAX_INT_DIGITS:
                raise YamlRefused(f"integer with more than {MAX_INT_DIGITS} digits", node)
            if len(digits) > 1 and digits[0] == "0":
                raise YamlRefused(f"'{clip(raw, 30)}' has a leading zero (YAML 1.1 octal); "
                                  f"write {int(digits)} or '{clip(raw, 30)}'", node)
            return int(raw.replace("_", ""))
        if _RADIX.fullmatch(raw):
            raise YamlRefused(f"'{clip(raw, 30)}' is not decimal; write it in decimal or quote it", node)
        raise YamlRefused(f"!!int value '{clip(raw, 30)}' is not a decimal integer", node)

    def construct_yaml_float(self, node: Node) -> float:
        raw = self.construct_scalar(node)
        if _INF_NAN.fullmatch(raw):
            return float(raw.lower().replace(".", ""))
        if _FLOAT.fullmatch(raw):
            return float(raw)
        raise YamlRefused(f"!!float value '{clip(raw, 30)}' is not a number", node)

    def construct_yaml_bool(self, node: Node) -> bool:
        raw = self.construct_scalar(node)
        if raw in _TRUE or raw in _FALSE:
            return raw in _TRUE
        raise YamlRefused(f"!!bool value '{clip(raw, 30)}' is not true or false", node)

    def construct_refused_tag(self, node: Node) -> None:
        raise YamlRefused(f"tag '{_tag_name(node.tag)}' is not allowed; use plain values", node)


for _tag, _ctor in (("int", _StrictConstructor.construct_yaml_int),
                    ("float", _StrictConstructor.construct_yaml_float),
                    ("bool", _StrictConstructor.construct_yaml_bool)):
    _StrictConstructor.add_constructor(_T + _tag, _ctor)
for _tag in ("binary", "timestamp", "omap", "pairs", "set"):
    _StrictConstructor.add_constructor(_T + _tag, _StrictConstructor.construct_refused_tag)
_StrictConstructor.add_constructor(None, _StrictConstructor.construct_refused_tag)  # any unknown tag


class _Resolver12(Resolver):
    """Implicit types of plain scalars in the style of the YAML 1.2 core schema (see the module docstring)."""

    yaml_implicit_resolvers: dict[str, list[tuple[str, re.Pattern[str]]]] = {}  # ours only, not YAML 1.1's


for _tag, _pattern, _first in (  # order matters: int before float, as the first match wins
        ("null", r"~|null|Null|NULL|", ["~", "n", "N", ""]),
        ("bool", "|".join(_TRUE + _FALSE), list("tTfF")),
        ("int", rf"{_DECIMAL.pattern}|{_RADIX.pattern}", list("-+0123456789")),
        ("float", rf"{_FLOAT.pattern}|{_INF_NAN.pattern}", list("-+0123456789.")),
        ("merge", "<<", ["<"])):
    _Resolver12.add_implicit_resolver(_T + _tag, re.compile(rf"^(?:{_pattern})$"), _first)


class StrictLoader(Reader, Scanner, Parser, _LimitedComposer, _StrictConstructor, _Resolver12):
    """The pure-Python loader: PyYAML's scanner and parser with the strict composer, constructor, resolver."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        _LimitedComposer.__init__(self)
        _StrictConstructor.__init__(self)
        _Resolver12.__init__(self)


if CParser is not None:
    class FastStrictLoader(_LimitedComposer, CParser, _StrictConstructor, _Resolver12):  # type: ignore[misc]
        """The same rules with libyaml's scanner and parser (about 4x faster). The Python composer comes
        first in the MRO, so composition, and with it every limit, stays ours."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _LimitedComposer.__init__(self)
            _StrictConstructor.__init__(self)
            _Resolver12.__init__(self)

    LOADER: type = FastStrictLoader
else:  # pragma: no cover - PyYAML built without libyaml
    LOADER = StrictLoader


def load_yaml(text: str, *, what: str) -> Any:
    """Parse one YAML document with :data:`LOADER` (libyaml-backed when available, else :class:`StrictLoader`;
    the same rules). ``what`` names the source in messages, e.g.
    ``"config file 'a.yaml'"`` or ``"--set train.lr"``. Empty text gives None. Raises :class:`ConfigError`:
    ``{what} line L: <refusal>`` for a limit, duplicate key or ambiguous value, and
    ``{what} is not valid YAML at line L: <problem>`` for a syntax error."""
    try:
        text.encode("utf-8")  # a lone surrogate (undecodable bytes in argv) would fail inside libyaml
    except UnicodeEncodeError as e:
        raise ConfigError(f"{what} holds bytes that are not UTF-8 (character {e.start})") from None
    try:
        return yaml.load(text, Loader=LOADER)  # noqa: S506 - safe: SafeConstructor-based
    except YamlRefused as e:
        raise ConfigError(f"{what} line {e.problem_mark.line + 1}: {e.problem}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}" if mark else ""
        problem = clip(e.problem or e.context or "", 60)
        raise ConfigError(f"{what} is not valid YAML{where}" + (f": {problem}" if problem else "")) from None
    except yaml.reader.ReaderError as e:  # a control character or bad encoding
        line = text.count("\n", 0, e.position) + 1 if isinstance(text, str) else 0
        raise ConfigError(f"{what} is not valid YAML at line {line}: unacceptable character "
                          f"#x{e.character if isinstance(e.character, int) else 0:04x}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} is not valid YAML ({type(e).__name__})") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as e:  # last line of defence: one line
        raise ConfigError(f"{what} is not valid YAML ({type(e).__name__})") from None


def load_value(raw: str, *, key: str) -> Any:
    """Parse the value of ``--set key=raw`` (blank gives None), with the rules of :func:`load_yaml`."""
    return load_yaml(raw, what=f"--set {clip(key, 40)}") if raw.strip() else None


@functools.cache
def _pseudo_fs() -> dict[int, str]:
    """Device number -> '/proc' or '/sys': their files claim size 0 and may block or fail when read."""
    found = {}
    for root in ("/proc", "/sys"):
        try:
            found[os.stat(root).st_dev] = root
        except OSError:
            pass
    return found


def _refuse_special(st: os.stat_result, what: str, shown: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what} '{shown}' is a {file_kind(st.st_mode)}, not a regular file")
    fs = _pseudo_fs().get(st.st_dev)
    if fs:
        raise ConfigError(f"{what} '{shown}' is a {fs} file, not a regular file")


def read_text(path: str | os.PathLike[str], *, what: str, limit: int = MAX_BYTES) -> str:
    """The UTF-8 text of the regular file ``path`` (symlinks followed), at most ``limit`` bytes.

    A FIFO, device, folder, socket or /proc or /sys file is refused after ``stat``, before any read; the
    file is opened with O_NONBLOCK and checked again with ``fstat`` in case it was swapped meanwhile.
    ``what`` names the file in messages (``"config file"``). Every failure is one :class:`ConfigError`:
    ``{what} '{path}' does not exist``, ``... cannot be read: <OS reason>``, ``... is larger than ...``.
    """
    shown = clip(path)
    if "\0" in os.fsdecode(path):  # the OS calls would raise ValueError, not OSError
        raise ConfigError(f"{what} '{shown}' is not a valid path (it contains a NUL byte)")
    try:
        _refuse_special(os.stat(path), what, shown)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            _refuse_special(st, what, shown)
            if st.st_size > limit:
                raise ConfigError(f"{what} '{shown}' is larger than {limit} bytes ({st.st_size})")
            chunks, got = [], 0
            while got <= limit:  # read limit + 1 bytes at most: the size may have grown since fstat
                chunk = os.read(fd, limit + 1 - got)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
        finally:
            os.close(fd)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise ConfigError(f"{what} '{shown}' does not exist") from None
        raise ConfigError(f"{what} '{shown}' cannot be read: {os_reason(e)}") from None
    if got > limit:
        raise ConfigError(f"{what} '{shown}' is larger than {limit} bytes")
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} '{shown}' is not UTF-8 text (byte {e.start})") from None


def read_yaml(path: str | os.PathLike[str], *, what: str, limit: int = MAX_BYTES) -> Any:
    """:func:`read_text` then :func:`load_yaml`, naming the file as ``{what} '{path}'``."""
    return load_yaml(read_text(path, what=what, limit=limit), what=f"{what} '{clip(path)}'")
