"""One convention for every gputel command's flags, applied after a parser is built.

`finish(parser, env, prefix)` walks the parser (and its sub-commands) once, so a flag
added anywhere later is covered without touching this module:

- every flag `--some-flag` can also be set as an environment variable, `<prefix>SOME_FLAG`
  (InfluxDB settings share `GPUTEL_INFLUX_<NAME>` across commands); a flag on the command
  line wins over the variable, the variable over the built-in default;
- every flag's help ends with its default and its variable, e.g.
  `(default: 16; env GPUTEL_BROKER_PARTITIONS)`; a secret's value is never shown;
- every command gets `--version`, and a sub-command without a description gets its help line.

It also holds the argparse types that more than one command needs (`listen_address`,
`positive_int`): a bad value is a usage error (exit 2) naming the flag, not a traceback or a
silently different setting later.

Commands that already read their variables themselves keep doing so under the same names;
this module makes the names uniform, documented and true for every flag.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

# Flags whose variable is shared by several commands, by destination prefix.
SHARED_PREFIXES = {"influx_": "GPUTEL_INFLUX_"}
SECRET_WORDS = ("token", "password", "secret")
TRUE_WORDS = ("1", "true", "yes", "on")
_FINISHED = "_gputel_flags_finished"
# A host name or IPv4 address, or a bracketed IPv6 address, then a port.
_LISTEN = re.compile(
    r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?):(\d{1,5})$"
)
_NAMED = re.compile(r"\benv (GPUTEL_[A-Z0-9_]+)")


def version() -> str:
    """The installed gputel version ("unknown" when run from a tree that is not installed)."""
    # Imported here: importlib.metadata (and its zipfile, email, …) cost every process ~10-30 ms
    # of start-up, and only `--version` needs it.
    from importlib import metadata

    try:
        return metadata.version("gputel")
    except metadata.PackageNotFoundError:  # pragma: no cover - always installed in practice
        return "unknown"


class _VersionOnDemand(argparse._VersionAction):
    """`--version`, with the installed version looked up only when the flag is given."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        self.version = f"%(prog)s {version()}"
        super().__call__(parser, namespace, values, option_string)


def listen_address(text: str) -> str:
    """An argparse type: HOST:PORT to listen on (port 0: any free one). Without it a port
    above 65535 reached gRPC, which silently listened on the port modulo 65536, and
    gunicorn, which failed with a traceback."""
    m = _LISTEN.match(text)
    if m is None or int(m.group(3)) > 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HOST:PORT with a port from 0 to 65535 (e.g. 127.0.0.1:7070)"
        )
    return text


def optional_listen_address(text: str) -> str:
    """`listen_address`, or '' (the flag's way to say "none")."""
    return text if text == "" else listen_address(text)


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def env_name(prefix: str, dest: str) -> str:
    """The environment variable of the flag stored in `dest`."""
    for start, shared in SHARED_PREFIXES.items():
        if dest.startswith(start):
            return shared + dest[len(start) :].upper()
    return prefix + dest.upper()


def finish(
    parser: argparse.ArgumentParser,
    env: Mapping[str, str],
    prefix: str,
    names: Mapping[str, str] | None = None,
    own: Collection[str] = (),
) -> argparse.ArgumentParser:
    """Apply the convention to `parser` and its not yet finished sub-commands; return it.

    `names` maps a destination to a variable name that predates the convention; `own` lists
    destinations whose variables the command resolves itself (documented here, not applied).
    """
    if getattr(parser, _FINISHED, False):
        return parser
    setattr(parser, _FINISHED, True)
    if not any(isinstance(a, argparse._VersionAction) for a in parser._actions):
        parser.add_argument("--version", action=_VersionOnDemand, help="print the version")
    # A choice that must be made on the command line (argparse checks only what argv says).
    chosen = {
        id(a) for g in parser._mutually_exclusive_groups if g.required for a in g._group_actions
    }
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help or "" for c in action._choices_actions}
            for name, sub in action.choices.items():
                said = helps.get(name, "")
                if not sub.description and said:  # `--help` of the command says what it does
                    sub.description = f"{said[0].upper()}{said[1:]}."
                finish(sub, env, prefix, names, own)
        elif id(action) in chosen:
            _document(action, "")
        elif action.option_strings and not _is_meta(action):
            named = _NAMED.search(action.help or "")  # a flag that documents its own variable
            name = (
                (names or {}).get(action.dest)
                or (named[1] if named else "")
                or env_name(prefix, action.dest)
            )
            if action.default is not argparse.SUPPRESS and action.dest not in own:
                _take_env(action, env, name)
            _document(action, name)
    return parser


def _is_meta(action: argparse.Action) -> bool:
    return isinstance(action, argparse._HelpAction | argparse._VersionAction)


def _take_env(action: argparse.Action, env: Mapping[str, str], name: str) -> None:
    """Make the value of variable `name`, when set, the flag's default."""
    raw = env.get(name, "")
    if not raw:
        return
    if action.nargs == 0:  # store_true / store_false / store_const
        on = raw.strip().lower() in TRUE_WORDS
        action.default = action.const if on else (not action.const if _is_bool(action) else None)
    elif isinstance(action, argparse._AppendAction):
        convert = action.type if callable(action.type) else str
        action.default = [convert(part.strip()) for part in raw.split(",") if part.strip()]
    else:
        action.default = raw  # argparse applies the flag's type to a string default
    action.required = False


def _document(action: argparse.Action, name: str) -> None:
    """End the flag's help with its default and its variable (unless the help says them)."""
    help_text = (action.help or "").rstrip()
    if help_text == argparse.SUPPRESS:
        return
    if action.required:
        parts = ["required"]
    else:
        parts = [] if "default" in help_text else [f"default: {_shown(action)}"]
    if not name:
        parts.append("no env: choose on the command line")
    elif name not in help_text:
        parts.append(f"env {name}")
    else:  # the help names its variable in a closing note: the default goes first in it
        head, sep, note = help_text.rpartition("(")
        if parts and sep and note.endswith(")") and name in note:
            action.help = f"{head}({'; '.join(parts)}; {note}".replace("%", "%%")
            return
    if parts:
        note = f"({'; '.join(parts)})".replace("%", "%%")
        action.help = f"{help_text} {note}" if help_text else note


def _is_bool(action: argparse.Action) -> bool:
    return isinstance(action.const, bool)


def _shown(action: argparse.Action) -> str:
    """The default as the help prints it; secrets and empty values say so instead."""
    value = action.default
    if value is argparse.SUPPRESS:
        return "none"
    if any(word in action.dest for word in SECRET_WORDS):
        return "hidden" if value else "none"
    if action.nargs == 0 and _is_bool(action):
        return "on" if value == action.const else "off"
    if value is None or value is argparse.SUPPRESS or value == "" or value == []:
        return "none"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)
