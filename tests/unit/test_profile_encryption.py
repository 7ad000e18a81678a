"""Encryption at rest of the profile changelog's values (``consumer.state.encryption``) and its
``[profiles]`` settings."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from consumer.commands.preamble import profile_cipher
from consumer.config import load_settings
from consumer.core.profiles import ChangelogProfileStore, PersonProfiles, Profile
from consumer.errors import ConfigError, ProfileDecodeError
from consumer.state.changelog import ChangelogTopic, ProfileChangelog
from consumer.state.encryption import ProfileCipher

K1, K2 = os.urandom(32), os.urandom(32)
PROFILE = Profile(fields={"email": "sam@example.com", "firstName": "Sam"}, consent={"sms": True})
ENV = {"GHL_LOCATION_ID": "LOC", "GHL_ACCESS_TOKEN": "pit-token"}


def test_a_sealed_value_holds_no_personal_data_and_opens_to_the_profile() -> None:
    cipher = ProfileCipher({"k1": K1}, "k1")
    sealed = cipher.seal("user-1", PROFILE.to_bytes())
    assert b"sam@example.com" not in sealed
    assert b"Sam" not in sealed
    assert sealed[:4] == b"\x01\x02k1"  # version, key id length, key id: readers know the key
    assert Profile.from_bytes(cipher.open("user-1", sealed)) == PROFILE
    assert cipher.seal("user-1", PROFILE.to_bytes()) != sealed  # a fresh nonce every time


def test_rotation_reads_old_values_and_writes_with_the_new_key() -> None:
    old = ProfileCipher({"k1": K1}, "k1").seal("user-1", PROFILE.to_bytes())
    rotated = ProfileCipher({"k1": K1, "k2": K2}, "k2")
    assert Profile.from_bytes(rotated.open("user-1", old)) == PROFILE
    new = rotated.seal("user-1", PROFILE.to_bytes())
    assert new[:4] == b"\x01\x02k2"
    with pytest.raises(ProfileDecodeError, match="'k2' is not configured"):
        ProfileCipher({"k1": K1}, "k1").open("user-1", new)


def test_an_unknown_key_id_is_a_decode_error_naming_the_id_only() -> None:
    sealed = ProfileCipher({"gone": K1}, "gone").seal("user-1", PROFILE.to_bytes())
    with pytest.raises(ProfileDecodeError, match="key id 'gone' is not configured") as caught:
        ProfileCipher({"k1": K1}, "k1").open("user-1", sealed)
    assert K1.hex() not in str(caught.value)


@pytest.mark.parametrize("position", [1, 4, 10, 20, -1])
def test_a_tampered_value_fails_authentication(position: int) -> None:
    cipher = ProfileCipher({"k1": K1}, "k1")
    sealed = bytearray(cipher.seal("user-1", PROFILE.to_bytes()))
    sealed[position] ^= 0x01
    with pytest.raises(ProfileDecodeError):
        cipher.open("user-1", bytes(sealed))


def test_a_value_moved_under_another_key_does_not_open() -> None:
    cipher = ProfileCipher({"k1": K1}, "k1")
    sealed = cipher.seal("user-1", PROFILE.to_bytes())
    with pytest.raises(ProfileDecodeError, match="authentication failed"):
        cipher.open("user-2", sealed)


def test_a_wrong_key_fails_authentication() -> None:
    sealed = ProfileCipher({"k1": K1}, "k1").seal("user-1", PROFILE.to_bytes())
    with pytest.raises(ProfileDecodeError, match="authentication failed with key id 'k1'"):
        ProfileCipher({"k1": K2}, "k1").open("user-1", sealed)


@pytest.mark.parametrize("value", [b"\x01", b"\x01\x00abc", b"\x01\x02k1" + b"\x00" * 20])
def test_a_malformed_envelope_is_a_decode_error(value: bytes) -> None:
    with pytest.raises(ProfileDecodeError, match="malformed"):
        ProfileCipher({"k1": K1}, "k1").open("user-1", value)


def test_plain_values_still_read_and_no_write_key_writes_plain() -> None:
    plain = PROFILE.to_bytes()
    assert ProfileCipher({"k1": K1}, "k1").open("user-1", plain) == plain
    read_only = ProfileCipher({"k1": K1})  # encryption turned off: old values still read
    assert read_only.seal("user-1", plain) == plain
    sealed = ProfileCipher({"k1": K1}, "k1").seal("user-1", plain)
    assert read_only.open("user-1", sealed) == plain


def test_the_cipher_refuses_a_key_that_is_not_aes_256() -> None:
    with pytest.raises(ValueError, match="16 bytes, AES-256 needs 32"):
        ProfileCipher({"k1": os.urandom(16)})
    with pytest.raises(ValueError, match="not one of the keys"):
        ProfileCipher({"k1": K1}, "k2")


class _Metrics:
    def profile_restored(
        self, partition: int | None, seconds: float, records: int, size: int
    ) -> None:
        pass

    def profile_released(self, partition: int) -> None:
        pass


def test_the_changelog_seals_what_the_store_writes() -> None:
    store = ChangelogProfileStore()
    log = ProfileChangelog(
        store=store,
        changelog=ChangelogTopic(
            topic="t", bootstrap="unused:9092", cipher=ProfileCipher({"k1": K1}, "k1")
        ),
        metrics=_Metrics(),
    )
    store.put("user-1", PROFILE)
    [(partition, key, value)] = log.take_writes()
    assert (partition, key) == (None, "user-1")  # the partitioner's choice, by key
    assert b"sam@example.com" not in value
    person = PersonProfiles(email="sam@example.com")
    person.feed(key, ProfileCipher({"k1": K1}).open(key, value))
    assert person.profiles == {"user-1": PROFILE}


def _key_b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def _load(tmp_path: Path, text: str, environ: dict[str, str]) -> ProfileCipher:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return profile_cipher(load_settings(str(path), {**ENV, **environ}))


def test_keys_come_from_the_environment_or_a_file_and_are_never_printed(tmp_path: Path) -> None:
    key_file = tmp_path / "k2.key"
    key_file.write_text(_key_b64(K2) + "\n")
    text = f"""
        [profiles]
        encryption_key_id = "k2"
        encryption_keys = [
          {{ id = "k1", key = {{ env = "PROFILE_KEY_K1" }} }},
          {{ id = "k2", key = {{ file = "{key_file}" }} }},
        ]
        """
    path = tmp_path / "config.toml"
    path.write_text(text)
    settings = load_settings(str(path), {**ENV, "PROFILE_KEY_K1": _key_b64(K1)})
    assert settings.profiles.keys() == {"k1": K1, "k2": K2}
    printed = repr(settings) + str(settings)
    assert _key_b64(K1) not in printed
    assert _key_b64(K2) not in printed
    cipher = profile_cipher(settings)
    assert cipher.seal("u", b"{}")[:4] == b"\x01\x02k2"
    old = ProfileCipher({"k1": K1}, "k1").seal("u", b"{}")
    assert cipher.open("u", old) == b"{}"


def test_no_profiles_section_means_plain_values() -> None:
    cipher = profile_cipher(load_settings(None, ENV))
    assert not cipher.encrypts
    assert cipher.seal("u", b"{}") == b"{}"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (base64.b64encode(os.urandom(16)).decode(), "16 bytes, AES-256 needs 32"),
        (os.urandom(32).hex(), "48 bytes, AES-256 needs 32"),
        ("not base64!", "not base64"),
    ],
)
def test_a_key_that_is_not_32_bytes_stops_start_up_naming_the_field(
    tmp_path: Path, value: str, message: str
) -> None:
    text = """
        [profiles]
        encryption_key_id = "k1"
        encryption_keys = [{ id = "k1", key = { env = "PROFILE_KEY_K1" } }]
        """
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text, {"PROFILE_KEY_K1": value})
    error = str(caught.value)
    assert error.startswith("profiles.encryption_keys[0].key (environment variable PROFILE_KEY_K1)")
    assert message in error
    assert value not in error


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('encryption_key_id = "k9"\nencryption_keys = []', "profiles.encryption_key_id: 'k9'"),
        ("encryption_keys = [{ id = \"k1\" }]", "profiles.encryption_keys[0].key: required"),
        (
            'encryption_keys = [{ id = "k1", key = "literal" }]',
            "profiles.encryption_keys[0].key: give",
        ),
        (
            'encryption_keys = [{ id = "a b", key = { env = "K" } }]',
            "profiles.encryption_keys[0].id: expected",
        ),
        (
            'encryption_keys = [{ id = "k", key = { env = "K" } },\n'
            '  { id = "k", key = { env = "K" } }]',
            "profiles.encryption_keys[1].id: 'k' is given twice",
        ),
        ('encryption_keys = [{ id = "k", key = { env = "NOPE" } }]', "NOPE is not set"),
        ("encryption_key = 1", "profiles.encryption_key: unknown setting"),
        ('encryption_keys = "k1"', "profiles.encryption_keys: expected a list"),
    ],
)
def test_profiles_errors_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, f"[profiles]\n{text}\n", {"K": _key_b64(K1)})
    assert message in str(caught.value)


def test_keys_are_read_only_by_the_commands_that_need_them(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[profiles]\nencryption_keys = [{ id = "k1", key = { env = "UNSET" } }]\n')
    # the dry run, dlq and audit: the key need not be set
    for kafka_secrets in (False, True):
        settings = load_settings(str(path), ENV, read_secrets=False, kafka_secrets=kafka_secrets)
        assert [k.id for k in settings.profiles.encryption_keys] == ["k1"]
    with pytest.raises(ConfigError, match="UNSET is not set"):  # run
        load_settings(str(path), ENV)
    with pytest.raises(ConfigError, match="UNSET is not set"):  # forget
        load_settings(str(path), ENV, read_secrets=False, profile_keys=True)
