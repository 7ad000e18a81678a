"""Encryption at rest of the profile changelog's values (``[profiles]`` settings): AES-256-GCM,
a random 96-bit nonce per value, and the key id in the record so a rotated key still reads.

A sealed value is an envelope: ``0x01`` (the format version; a plain profile, JSON, starts with
``{``), the key id's length (1 byte), the key id (ASCII), the nonce (12 bytes), then the
ciphertext with its 16-byte tag. The version byte, the key id and the record's key are
authenticated too, so a value moved under another user's key does not decrypt. Record keys stay
in clear: compaction and tombstones (``ghl-consumer forget``) work as before.

Rotation: configure the new key beside the old ones and make it the write key; values sealed
with an old key read as long as that key is configured, and are re-sealed with the new one when
their profile next changes. A plain value (written before encryption was turned on) still reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from consumer.errors import ProfileDecodeError

_VERSION: Final = 1
_NONCE_BYTES: Final = 12
KEY_BYTES: Final = 32  # AES-256


class ProfileCipher:
    """Seals the values the engine writes to the changelog and opens the values read back.

    ``keys``: key id -> 32-byte key, every key a value may have been sealed with. ``write_key``:
    the id new values are sealed with; None writes plain values (still reading sealed ones, the
    way back from encryption). Raises ValueError for a key that is not 32 bytes, a key id that
    is not 1 to 255 ASCII characters, or a write key not in ``keys``; the message never holds
    key material."""

    def __init__(self, keys: Mapping[str, bytes], write_key: str | None = None) -> None:
        self._keys: dict[str, AESGCM] = {}
        for key_id, key in keys.items():
            _key_id_bytes(key_id)
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {key_id!r}: {len(key)} bytes, AES-256 needs {KEY_BYTES}")
            self._keys[key_id] = AESGCM(key)
        if write_key is not None and write_key not in self._keys:
            raise ValueError(f"write key {write_key!r} is not one of the keys")
        self._write_key = write_key
        self._header = _header(write_key) if write_key is not None else b""

    @property
    def encrypts(self) -> bool:
        """Whether ``seal`` encrypts (a write key is set)."""
        return self._write_key is not None

    def seal(self, record_key: str, value: bytes) -> bytes:
        """``value`` encrypted with the write key, as an envelope; unchanged without one."""
        if self._write_key is None:
            return value
        nonce = os.urandom(_NONCE_BYTES)
        aad = self._header + record_key.encode("utf-8", "backslashreplace")
        return self._header + nonce + self._keys[self._write_key].encrypt(nonce, value, aad)

    def open(self, record_key: str, value: bytes) -> bytes:
        """The plain value of a changelog record: decrypted when sealed, as given when plain.
        Raises ProfileDecodeError for a key id not configured, a malformed envelope or a value
        that fails authentication (tampered, or sealed under another record key)."""
        if not value or value[0] != _VERSION:
            return value
        length = value[1] if len(value) > 1 else 0
        start = 2 + length
        if length == 0 or len(value) < start + _NONCE_BYTES + 16:
            raise ProfileDecodeError("encrypted profile: malformed envelope")
        key_id = value[2:start].decode("ascii", "replace")
        aes = self._keys.get(key_id)
        if aes is None:
            raise ProfileDecodeError(
                f"encrypted profile: key id {key_id!r} is not configured "
                "(profiles.encryption_keys)"
            )
        nonce = value[start : start + _NONCE_BYTES]
        aad = value[:start] + record_key.encode("utf-8", "backslashreplace")
        try:
            return aes.decrypt(nonce, value[start + _NONCE_BYTES :], aad)
        except InvalidTag:
            raise ProfileDecodeError(
                f"encrypted profile: authentication failed with key id {key_id!r} "
                "(tampered, or not this record's value)"
            ) from None


def _key_id_bytes(key_id: str) -> bytes:
    if not (0 < len(key_id) < 256 and key_id.isascii() and key_id.isprintable()):
        raise ValueError(f"key id {key_id!r}: expected 1 to 255 printable ASCII characters")
    return key_id.encode("ascii")


def _header(key_id: str) -> bytes:
    encoded = _key_id_bytes(key_id)
    return bytes((_VERSION, len(encoded))) + encoded
