"""Secrets at rest: Fernet encryption with one server key.

The key comes from env WHARF_SECRET_KEY (a Fernet key: 32 url-safe base64
bytes) or from data_dir/secret.key, created on first start with mode 0600.
Lose the key and every stored Qianfan/SenseNova secret is unreadable (API
keys are hashed, not encrypted, and keep working). Never log secrets.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from wharf.errors import Internal
from wharf.platform.private_files import private_file

ENV_KEY = "WHARF_SECRET_KEY"


class SecretBox:
    def __init__(self, key: bytes | str):
        self._fernet = Fernet(key)

    def __repr__(self) -> str:                     # never show the key
        return "SecretBox(<hidden>)"

    @classmethod
    def generate_key(cls) -> str:
        return Fernet.generate_key().decode()

    @classmethod
    def load(cls, data_dir: Path | str, *, env: dict | None = None) -> "SecretBox":
        env = os.environ if env is None else env
        if env.get(ENV_KEY):
            return cls(env[ENV_KEY].strip())
        path = Path(data_dir) / "secret.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            key = Fernet.generate_key()
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:                # another process won the race
                pass
            else:
                with os.fdopen(fd, "wb") as f:
                    f.write(key)
        private_file(path)                         # one made readable by others before: 0600 now
        return cls(path.read_bytes().strip())

    def encrypt(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise Internal("a stored secret cannot be decrypted (wrong WHARF_SECRET_KEY?)") from None
