"""`loratune ui`: the web UI on 127.0.0.1; `--listen` (all interfaces) only with a password; HTTPS with --ssl-*."""

from __future__ import annotations

import os
import ssl
import sys
from pathlib import Path

from loratune.errors import LoratuneError


def add(sub) -> None:
    ui = sub.add_parser("ui", help="start the web UI (model, dataset, train, LoRAs, generate)")
    ui.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    ui.add_argument(
        "--listen", action="store_true", help="serve on all network interfaces, not only 127.0.0.1 (needs --auth)"
    )
    ui.add_argument("--auth", help="user:password required to open the UI")
    ui.add_argument("--auth-file", help="a file of user:password lines (one per allowed user)")
    ui.add_argument("--ssl-certfile", help="serve HTTPS with this PEM certificate (needs --ssl-keyfile)")
    ui.add_argument("--ssl-keyfile", help="the certificate's unencrypted PEM private key (needs --ssl-certfile)")
    ui.add_argument("--max-upload-mb", type=int, default=100, help="largest dataset upload accepted (default 100)")
    ui.set_defaults(run=run_ui)


def run_ui(args, extra: list[str]) -> int:
    auth = parse_auth(args.auth, args.auth_file)
    if args.listen and not auth:
        raise LoratuneError("--listen serves the UI to the network: give --auth user:password or --auth-file")
    if args.max_upload_mb <= 0:
        raise LoratuneError("--max-upload-mb must be > 0")
    certfile, keyfile = check_ssl(args.ssl_certfile, args.ssl_keyfile)
    if args.listen and not certfile:
        print(
            "note: plain HTTP: the password and everything shown travel unencrypted; on a network you do not trust, "
            "give --ssl-certfile and --ssl-keyfile",
            file=sys.stderr,
        )
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    try:
        from loratune.ui import serve
    except ModuleNotFoundError as e:
        if e.name != "gradio":
            raise
        raise LoratuneError("the web UI needs Gradio: pip install 'loratune[ui]'") from None

    serve(
        home=args.home,
        host="0.0.0.0" if args.listen else "127.0.0.1",
        port=args.port,
        auth=auth or None,
        max_upload_mb=args.max_upload_mb,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
    )
    return 0


def check_ssl(certfile: str | None, keyfile: str | None) -> tuple[str | None, str | None]:
    """Both or neither; loaded once here, so a wrong file fails in one line before Gradio starts."""
    if bool(certfile) != bool(keyfile):
        given, missing = ("--ssl-certfile", "--ssl-keyfile") if certfile else ("--ssl-keyfile", "--ssl-certfile")
        raise LoratuneError(f"{given} needs {missing} too: give the certificate and its private key together")
    if not certfile:
        return None, None
    cert, key = Path(certfile).expanduser().resolve(), Path(keyfile).expanduser().resolve()
    for option, path in (("--ssl-certfile", cert), ("--ssl-keyfile", key)):
        if not path.is_file():
            raise LoratuneError(f"{option}: file not found: {path}")
    try:  # an empty password: an encrypted key fails here instead of prompting on the terminal
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, OSError) as e:
        raise LoratuneError(
            f"--ssl-certfile {cert} with --ssl-keyfile {key}: {e.strerror or e} (give a PEM certificate and its "
            "matching unencrypted private key)"
        ) from None
    return str(cert), str(key)


def parse_auth(auth: str | None, auth_file: str | None) -> list[tuple[str, str]]:
    lines = [auth] if auth else []
    if auth_file:
        path = Path(auth_file).expanduser()
        if not path.is_file():
            raise LoratuneError(f"auth file not found: {path}")
        lines += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    pairs = []
    for line in lines:
        user, colon, password = line.partition(":")
        if not colon or not user or not password:
            raise LoratuneError(f"{auth_file or '--auth'}: expected user:password, got {line.split(':')[0]!r}:...")
        pairs.append((user, password))
    return pairs
