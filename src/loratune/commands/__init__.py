"""One module per `loratune <command>`: each has `add(subparsers)`, which sets `run(args, extra) -> exit code`.

A new command is a new module here plus its name in COMMANDS.
"""

COMMANDS = ("train", "generate", "chat", "data", "models", "estimate", "loras", "serve", "ui", "completion")
