"""`loratune completion bash|zsh|fish`: a shell completion script made from the command line's own parser.

Every subcommand, sub-subcommand, option and choice comes from argparse, and the dotted overrides (`--train.lr`) from
the config dataclasses, so the script cannot drift from the program. Install:
  bash  `source <(loratune completion bash)` in ~/.bashrc (or save the script as
        ~/.local/share/bash-completion/completions/loratune)
  zsh   save it as `_loratune` in a folder of your $fpath (or `source <(loratune completion zsh)` after compinit)
  fish  `loratune completion fish > ~/.config/fish/completions/loratune.fish`
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

SHELLS = ("bash", "zsh", "fish")
ANY_VALUE = "<file>"  # an option's value without choices: the shell completes file names


def add(sub) -> None:
    completion = sub.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh or fish)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    completion.add_argument("shell", choices=SHELLS)
    completion.set_defaults(run=run_completion)


def run_completion(args, extra: list[str]) -> int:
    from loratune.cli import build_parser

    print(script(build_parser(), args.shell), end="")
    return 0


@dataclass
class Option:
    help: str
    choices: list[str] | None  # None: a flag, it takes no value; []: any value


@dataclass
class Node:
    """One level of the command line: `loratune` itself (path ""), `loratune loras`, `loratune loras export` ..."""

    path: str
    children: dict[str, str] = field(default_factory=dict)  # subcommand -> its help
    options: dict[str, Option] = field(default_factory=dict)
    values: list[str] = field(default_factory=list)  # the choices of its positional arguments


def nodes(parser: argparse.ArgumentParser) -> list[Node]:
    from loratune.cli import walk

    return [_node("", parser)] + [_node(" ".join(path), child) for path, child in walk(parser)]


def _node(path: str, parser: argparse.ArgumentParser) -> Node:
    from loratune.config import field_help

    node = Node(path)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            node.children = {choice.dest: choice.help or "" for choice in action._choices_actions}
        elif action.option_strings and action.help != argparse.SUPPRESS:
            choices = None if action.nargs == 0 else [str(c) for c in action.choices or ()]
            for option in action.option_strings:
                node.options[option] = Option(_first_sentence(action.help), choices)
        elif not action.option_strings and action.choices:
            node.values += [str(c) for c in action.choices]
    groups = parser.get_default("takes_overrides")  # True: every option; a tuple: those of these groups
    if groups:
        for dotted, default, doc in field_help():
            if groups is True or dotted.split(".")[0] in groups:
                choices = ["true", "false"] if isinstance(default, bool) else []
                node.options[f"--{dotted}"] = Option(_first_sentence(doc), choices)
    return node


def _first_sentence(text: str | None) -> str:
    text = " ".join((text or "").split()).replace("%%", "%")
    return text.split("; ")[0].split(". ")[0][:80]


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    table = nodes(parser)
    return {"bash": bash_script, "zsh": zsh_script, "fish": fish_script}[shell](table)


def _lookups(table: list[Node]) -> str:
    """Shell functions (the same syntax in bash and zsh) that answer from the parser's tables:
    _loratune_children PATH: the subcommands; _loratune_words PATH: all a word there can be;
    _loratune_value PATH OPTION: the option's choices, <file> for any value, or status 1 for a flag."""
    children = "".join(f'        "{n.path}") echo "{" ".join(n.children)}" ;;\n' for n in table if n.children)
    words = "".join(f'        "{n.path}") echo "{" ".join([*n.children, *n.values, *n.options])}" ;;\n' for n in table)
    values = "".join(
        f'        "{n.path}|{name}") echo "{" ".join(o.choices) or ANY_VALUE}" ;;\n'
        for n in table
        for name, o in n.options.items()
        if o.choices is not None
    )
    return (
        f'_loratune_children() {{\n    case "$1" in\n{children}    esac\n}}\n\n'
        f'_loratune_words() {{\n    case "$1" in\n{words}    esac\n}}\n\n'
        f'_loratune_value() {{\n    case "$1|$2" in\n{values}        *) return 1 ;;\n    esac\n}}\n'
    )


# The words before the cursor name the subcommand path (an option's value is skipped); the word under the cursor is
# completed from that path's table, or from the option's choices when it follows one.
_WALK = """    local node="" word value i
    for ((i = FIRST; i < CURRENT_INDEX; i++)); do
        word="${WORDS[i]}"
        if [[ "$word" == -* ]]; then
            _loratune_value "$node" "$word" >/dev/null && ((i++))
        elif [[ " $(_loratune_children "$node") " == *" $word "* ]]; then
            node="${node:+$node }$word"
        fi
    done
    local prev="${WORDS[CURRENT_INDEX - 1]}"
"""


def bash_script(table: list[Node]) -> str:
    walk = _WALK.replace("FIRST", "1").replace("CURRENT_INDEX", "COMP_CWORD").replace("WORDS", "COMP_WORDS")
    return (
        "# bash completion for loratune (made by `loratune completion bash`)\n\n"
        + _lookups(table)
        + "\n_loratune() {\n"
        + '    local cur="${COMP_WORDS[COMP_CWORD]}"\n'
        + walk
        + '    if ((COMP_CWORD > 1)) && [[ "$prev" == -* ]] && value="$(_loratune_value "$node" "$prev")"; then\n'
        + f'        if [[ "$value" == "{ANY_VALUE}" ]]; then\n'
        + '            COMPREPLY=($(compgen -f -- "$cur"))\n'
        + "        else\n"
        + '            COMPREPLY=($(compgen -W "$value" -- "$cur"))\n'
        + "        fi\n"
        + "        return 0\n"
        + "    fi\n"
        + '    COMPREPLY=($(compgen -W "$(_loratune_words "$node")" -- "$cur"))\n'
        + "}\n\n"
        + "complete -o default -F _loratune loratune\n"
    )


def zsh_script(table: list[Node]) -> str:
    # zsh: words[1] is `loratune` and CURRENT the index of the word under the cursor (arrays count from 1).
    walk = _WALK.replace("FIRST", "2").replace("CURRENT_INDEX", "CURRENT").replace("WORDS", "words")
    return (
        "#compdef loratune\n# zsh completion for loratune (made by `loratune completion zsh`)\n\n"
        + _lookups(table)
        + "\n_loratune() {\n"
        + walk
        + '    if ((CURRENT > 2)) && [[ "$prev" == -* ]] && value="$(_loratune_value "$node" "$prev")"; then\n'
        + f'        if [[ "$value" == "{ANY_VALUE}" ]]; then\n'
        + "            _files\n"
        + "        else\n"
        + "            compadd -- ${=value}\n"
        + "        fi\n"
        + "        return\n"
        + "    fi\n"
        + '    compadd -- $(_loratune_words "$node") || _files\n'
        + "}\n\n"
        + 'if [[ "$funcstack[1]" == "_loratune" ]]; then\n    _loratune "$@"\n'
        + "else\n    compdef _loratune loratune\nfi\n"
    )


def fish_script(table: list[Node]) -> str:
    lines = [
        "# fish completion for loratune (made by `loratune completion fish`)",
        "",
        "function __loratune_children",
        '    switch "$argv[1]"',
    ]
    for n in table:
        if n.children:
            lines += [f"        case {_fish_quote(n.path)}", f"            printf '%s\\n' {' '.join(n.children)}"]
    lines += [
        "    end",
        "end",
        "",
        "# the subcommand path the words before the cursor name, e.g. 'loras export'",
        "function __loratune_node",
        '    set -l node ""',
        "    for word in (commandline -opc)[2..-1]",
        '        if contains -- $word (__loratune_children "$node")',
        '            set node (string trim -- "$node $word")',
        "        end",
        "    end",
        '    echo "$node"',
        "end",
        "",
        "function __loratune_at",
        "    set -l node (__loratune_node)",
        '    test "$node" = "$argv[1]"',
        "end",
        "",
    ]
    for n in table:
        at = f"-n \"__loratune_at '{n.path}'\""  # a path is plain words
        for name, help in n.children.items():
            lines.append(f"complete -c loratune {at} -f -a {name} -d {_fish_quote(help)}")
        if n.values:
            lines.append(f"complete -c loratune {at} -f -a {_fish_quote(' '.join(n.values))}")
        for name, o in n.options.items():
            flag = f"-l {name[2:]}" if name.startswith("--") else f"-s {name[1:]}"
            if o.choices is None:
                value = ""
            elif o.choices:
                value = f" -r -f -a {_fish_quote(' '.join(o.choices))}"
            else:
                value = " -r -F"
            lines.append(f"complete -c loratune {at} {flag}{value} -d {_fish_quote(o.help)}")
    return "\n".join(lines) + "\n"


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
