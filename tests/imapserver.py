"""A real Dovecot 2.3 IMAP server on 127.0.0.1 for tests: temp dir, free ports, no system state.

Follows shared/recipes/dovecot.md. Any user name logs in with ``PASSWORD`` (static passdb)
and gets a fresh empty mailbox, so each test isolates itself with ``new_user()``.
"""

from __future__ import annotations

import contextlib
import grp
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
OPENSSL = "openssl"
PASSWORD = "secret"
# Dovecot 2.4 changed the config syntax (recipe section 1): this template only works on 2.3.
SUPPORTED_VERSION = "2.3"
# Recipe section 4: Dovecot exits with 89 on a bad config or a port that is already taken.
EXIT_CONFIG = 89
START_ATTEMPTS = 5
READY_SECONDS = 10.0

CONFIG = """\
base_dir = @DIR@/run
state_dir = @DIR@/state
instance_name = dovecot-test-@IMAP_PORT@
listen = 127.0.0.1
protocols = imap
log_path = @DIR@/dovecot.log

ssl = yes
ssl_cert = <@DIR@/cert.pem
ssl_key = <@DIR@/key.pem

disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
passdb {
  driver = static
  args = password=@PASSWORD@
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=@DIR@/mail/%u
}

mail_location = maildir:~/Maildir
mail_fsync = never
mail_max_userip_connections = 100

namespace inbox {
  inbox = yes
  separator = /
  mailbox Drafts {
    special_use = \\Drafts
    auto = subscribe
  }
  mailbox Sent {
    special_use = \\Sent
    auto = subscribe
  }
  mailbox Junk {
    special_use = \\Junk
    auto = subscribe
  }
  mailbox Trash {
    special_use = \\Trash
    auto = subscribe
  }
}

service imap-login {
  inet_listener imap {
    port = @IMAP_PORT@
  }
  inet_listener imaps {
    port = @IMAPS_PORT@
    ssl = yes
  }
}

service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
"""

_user_numbers = itertools.count(1)


def new_user(prefix: str = "t") -> str:
    """A user name not used before in this test run, like ``t1@example.test``: a fresh mailbox."""
    return f"{prefix}{next(_user_numbers)}@example.test"


def free_port() -> int:
    """A port nobody listens on right now (another process may still take it before we do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dovecot_version() -> str:
    """``dovecot --version``; fails with what to install when Dovecot is missing or not 2.3."""
    try:
        out = subprocess.run(
            [DOVECOT, "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(
            f"{DOVECOT} --version failed ({exc}); install Dovecot 2.3: "
            "apt-get install dovecot-imapd openssl (see shared/recipes/dovecot.md)"
        ) from exc
    if not out.startswith(SUPPORTED_VERSION + "."):
        raise RuntimeError(
            f"{DOVECOT} is version {out!r}; the test server config needs Dovecot "
            f"{SUPPORTED_VERSION}.x (2.4 changed the config syntax)"
        )
    return out


class LocalImapServer:
    """One Dovecot instance: plain IMAP on ``port`` (STARTTLS offered) and IMAPS on ``ssl_port``."""

    host = "127.0.0.1"
    password = PASSWORD

    def __init__(self) -> None:
        self.dir: Path | None = None
        self.port = 0
        self.ssl_port = 0
        self.ca_file: Path | None = None
        self.version = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Create the directory, certificate and config, start Dovecot and wait for its greeting."""
        if self.dir is not None:
            raise RuntimeError("LocalImapServer already started")
        self.version = dovecot_version()
        self.dir = Path(tempfile.mkdtemp(prefix="dv", dir="/tmp"))
        try:
            self._prepare_dir()
            for attempt in range(1, START_ATTEMPTS + 1):
                self.port, self.ssl_port = self._two_free_ports()
                self._write_config()
                if self._launch(retry_on_port_clash=attempt < START_ATTEMPTS):
                    return
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the whole process group (SIGTERM, then SIGKILL) and remove the directory."""
        self._kill()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def restart(self) -> None:
        """Stop, then start on the same directory and ports: clients see their connection drop."""
        if self.dir is None:
            raise RuntimeError("LocalImapServer not started")
        self._kill()
        self._launch(retry_on_port_clash=False)  # returns True or raises

    def __enter__(self) -> LocalImapServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def config_path(self) -> Path:
        assert self.dir is not None, "server not started"
        return self.dir / "dovecot.conf"

    def doveadm(self, *args: str) -> str:
        """``doveadm -c <this config> ARGS``: its stdout; RuntimeError with stderr on failure."""
        result = subprocess.run(
            [DOVEADM, "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"doveadm {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}"
            )
        return result.stdout

    # --- helpers -------------------------------------------------------------------------------

    def _prepare_dir(self) -> None:
        assert self.dir is not None
        # The auth process (user dovecot) and the mail process (nobody) must pass through it.
        os.chmod(self.dir, 0o711)
        mail = self.dir / "mail"
        mail.mkdir()
        os.chown(mail, pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid)
        self.ca_file = self.dir / "cert.pem"
        subprocess.run(
            [
                OPENSSL, "req", "-x509", "-newkey", "ec",
                "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", str(self.dir / "key.pem"), "-out", str(self.ca_file),
                "-days", "3650", "-subj", "/CN=localhost",
                "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )  # fmt: skip

    @staticmethod
    def _two_free_ports() -> tuple[int, int]:
        first = free_port()
        second = free_port()
        while second == first:
            second = free_port()
        return first, second

    def _write_config(self) -> None:
        assert self.dir is not None
        text = (
            CONFIG.replace("@DIR@", str(self.dir))
            .replace("@IMAP_PORT@", str(self.port))
            .replace("@IMAPS_PORT@", str(self.ssl_port))
            .replace("@PASSWORD@", PASSWORD)
        )
        self.config_path.write_text(text)

    def _launch(self, *, retry_on_port_clash: bool) -> bool:
        """Start the master and wait until ready: True, or False on a port clash worth retrying."""
        assert self.dir is not None
        log_path = self.dir / "dovecot.log"
        # The log survives restarts: only what is written after this launch counts.
        self._log_offset = log_path.stat().st_size if log_path.exists() else 0
        out_path = self.dir / "dovecot.out"
        with open(out_path, "wb") as out:
            self._proc = subprocess.Popen(
                [DOVECOT, "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                output = out_path.read_text(errors="replace")
                clash = code == EXIT_CONFIG and "Address already in use" in output
                if clash and retry_on_port_clash:
                    return False
                raise RuntimeError(
                    f"dovecot exited with status {code} while starting on ports "
                    f"{self.port}/{self.ssl_port}\n--- output ---\n{output}"
                    f"\n--- dovecot.log ---\n{self._log_tail()}"
                )
            if "starting up for imap" in self._log_tail() and self._greeting_ok():
                return True
            time.sleep(0.01)
        self._kill()
        raise RuntimeError(
            f"dovecot did not greet on 127.0.0.1:{self.port} within {READY_SECONDS:.0f} s"
            f"\n--- dovecot.log ---\n{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        assert self.dir is not None
        try:
            with open(self.dir / "dovecot.log", "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _greeting_ok(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as sock:
                data = b""
                while b"\r\n" not in data:
                    chunk = sock.recv(1024)
                    if not chunk:
                        break
                    data += chunk
        except OSError:
            return False
        return data.startswith(b"* OK")

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        # The whole group: SIGTERM to the master alone leaves imap processes of connected clients.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        # Children may outlive the master for a moment: make sure the group is gone.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


__all__ = ["PASSWORD", "LocalImapServer", "dovecot_version", "free_port", "new_user"]
