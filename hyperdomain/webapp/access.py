"""Who may talk to the app, and what it may publish.

- **Host and Origin.** A page on another site can point its own name at 127.0.0.1 (DNS
  rebinding) and then read the app as if it were that site; a page on any origin can send a
  form to it. So every request must name, in ``Host``, the address the server was started on
  (or ``localhost`` and loopback addresses for a loopback server, or a name given with
  ``--allow-host`` for a reverse proxy), and a request that carries an ``Origin`` must come from
  that same host. Anything else is answered 403 before Gradio sees it.
- **The work folder** holds runs, uploads and photos: it is never served as a whole (only its
  ``downloads/``, where the page puts what it made for download), and a folder that already
  holds unrelated files is refused, so ``--work-dir ~`` cannot publish a home folder.
- **Passwords** (``--auth USER:PASS`` or a file of such lines), and a warning when the app listens
  beyond the loopback without one.
"""
from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import urlsplit

from ..errors import HyperdomainError
from ..files.atomic import write_text

MARKER = ".hyperdomain-app"  # written into a work folder the app made its own
APP_FOLDERS = ("downloads", "runs", "uploads", "photos", MARKER)  # what an app's work folder holds
PUBLISHED = "downloads"  # the one served folder: files the page made for download
MAX_UPLOAD_MB = 50.0  # photos and domain files are a few MB; a bigger upload is refused by the server


# ------------------------------------------------------------------------------------------- hosts
def _ip(host: str):
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    ip = _ip(host)
    return host.lower() == "localhost" or (ip is not None and ip.is_loopback)


def check_bind_host(host: str) -> str:
    """``host`` if the app can listen on it: an IPv4 address (four numbers 0-255) or a host name that
    resolves, and one this machine can bind; else one line saying which and what to use instead."""
    hint = "use an address of this machine, e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
    ip = _ip(host)
    if ip is not None and ip.version == 6:  # Gradio builds its URL as host:port, which breaks on one
        raise HyperdomainError(f"{host!r}: the app listens on IPv4 addresses only; {hint}")
    if ip is None:
        if not host or host.replace(".", "").isdigit() or ":" in host:  # meant as an address: not a valid one
            raise HyperdomainError(f"{host!r} is not a valid IP address; {hint}")
        try:
            socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as e:
            raise HyperdomainError(f"{host!r} is not a valid address (no such host name: {e}); {hint}") from None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.bind(address)  # port 0: any free port; only the address is tried
    except OSError as e:
        raise HyperdomainError(f"cannot listen on {host!r} ({e.strerror or e}); {hint}") from None
    return host


class HostPolicy:
    """Which ``Host`` and ``Origin`` values a server started on ``bind`` answers."""

    def __init__(self, bind: str, allow: Iterable[str] = ()):
        self.bind = bind.strip("[]").lower()
        self.allow = {a.strip().lower() for a in allow if a.strip()}
        ip = _ip(self.bind)
        self.loopback = is_loopback(self.bind)
        self.any_interface = ip is not None and ip.is_unspecified
        self.names = {self.bind} | self.allow
        if self.loopback or self.any_interface:
            self.names |= {"localhost", "127.0.0.1", "::1"}
        if self.any_interface:
            self.names |= {socket.gethostname().lower(), socket.getfqdn().lower()}

    def host_ok(self, hostname: str | None) -> bool:
        if not hostname:
            return False
        hostname = hostname.strip("[]").lower()
        if hostname in self.names:
            return True
        ip = _ip(hostname)
        if ip is None:
            return False  # a name nobody allowed: what a rebinding page sends
        if self.loopback:
            return ip.is_loopback
        # listening on every interface: any of this machine's addresses (an IP literal cannot be rebound)
        return self.any_interface

    def origin_ok(self, origin: str, host_header: str) -> bool:
        """A browser's ``Origin``: the page's own server (same host and port as the request names), or
        an allowed name (a reverse proxy's public name)."""
        try:
            parts = urlsplit(origin)
            hostname = parts.hostname
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not hostname:
            return False  # "null" (sandboxed frames, file://) and anything odd
        if parts.netloc.lower() == host_header.lower():
            return True
        return hostname.lower() in self.allow


def _host_of(header: str) -> str | None:
    try:
        return urlsplit("//" + header).hostname
    except ValueError:
        return None


class HostCheck:
    """ASGI middleware: 403 for a request whose ``Host`` or ``Origin`` the :class:`HostPolicy` refuses."""

    def __init__(self, app, policy: HostPolicy):
        self.app = app
        self.policy = policy

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        why = None
        if not self.policy.host_ok(_host_of(host)):
            why = f"Host {host[:100]!r} is not this server's address"
        elif "origin" in headers and not self.policy.origin_ok(headers["origin"], host):
            why = f"Origin {headers['origin'][:100]!r} is not this server's page"
        if why is None:
            return await self.app(scope, receive, send)
        body = (f"hyperdomain: refused: {why} (a reverse proxy's name can be allowed with "
                f"--allow-host NAME)\n").encode()
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def check_upload_limit(megabytes) -> float:
    """``--max-upload-mb`` as a finite number in (0, 1e6], or one line."""
    try:
        x = float(megabytes)
    except (TypeError, ValueError):
        x = float("nan")
    if not 0 < x <= 1e6:  # NaN fails too
        raise HyperdomainError(f"--max-upload-mb {megabytes!r}: expected a number of megabytes in (0, 1e6]")
    return x


# ------------------------------------------------------------------------------------- passwords
def parse_auth(values: Sequence[str] = (), files: Sequence[str | os.PathLike] = ()) -> list[tuple[str, str]]:
    """``USER:PASS`` pairs from ``--auth`` values and from files of such lines (``#`` comments)."""
    pairs = []

    def one(text: str, where: str) -> None:
        user, sep, password = text.partition(":")
        if not sep or not user.strip() or not password:
            raise HyperdomainError(f"{where}: expected USER:PASS (a user name, a colon, a password)")
        pairs.append((user.strip(), password))

    for v in values:
        one(v, "--auth")
    for f in files:
        try:
            lines = Path(f).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise HyperdomainError(f"--auth-file {f}: cannot read it ({type(e).__name__})") from None
        for k, line in enumerate(lines, 1):
            if line.strip() and not line.lstrip().startswith("#"):
                one(line.rstrip("\r\n"), f"--auth-file {f} line {k}")
        if not pairs:
            raise HyperdomainError(f"--auth-file {f}: no USER:PASS line")
    return pairs


# ----------------------------------------------------------------------------------- work folder
def check_work_dir(work_dir: str | os.PathLike) -> Path:
    """``work_dir`` (absolute) if the app may make it its own: new, empty, or an earlier app's (only
    the app's own folders in it); else one line. Reads only.

    A folder with anything else in it is refused: its files would sit beside what the app writes,
    and a mistake (``--work-dir ~``) must not put them one setting away from a server.
    """
    work_dir = Path(work_dir).resolve()
    if work_dir.exists() and not work_dir.is_dir():
        raise HyperdomainError(f"--work-dir {work_dir}: is a file, not a folder")
    if work_dir.is_dir() and not (work_dir / MARKER).is_file():
        foreign = sorted(p.name for p in work_dir.iterdir() if p.name not in APP_FOLDERS)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise HyperdomainError(f"--work-dir {work_dir}: already holds files that are not the app's ({shown}); "
                                   f"choose a new or empty folder")
    return work_dir


def claim_work_dir(work_dir: str | os.PathLike) -> Path:
    """:func:`check_work_dir`, then the folder made the app's (its ``downloads/`` and the marker)."""
    work_dir = check_work_dir(work_dir)
    (work_dir / PUBLISHED).mkdir(parents=True, exist_ok=True)
    if not (work_dir / MARKER).is_file():
        write_text(work_dir / MARKER, "a hyperdomain serve work folder: runs/ and uploads/ stay private; "
                                      "downloads/ holds what the page made for download\n")
    return work_dir
