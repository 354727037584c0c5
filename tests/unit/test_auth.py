"""Unit tests for tcpft.auth: users file, password hashing, verification, LoginGuard."""

from __future__ import annotations

import asyncio
import fcntl
import os
import stat
from pathlib import Path
from typing import Literal

import argon2
import pytest

from tcpft import auth
from tcpft.auth import (
    DEFAULT_USER,
    LoginGuard,
    User,
    UserStore,
    create_default,
    hash_password,
    lock_users_file,
    validate_password,
    validate_username,
)
from tcpft.errors import LocalFileError, UsageError
from tcpft.limits import MAX_PASSWORD_BYTES, MAX_USERNAME_BYTES

PASSWORD = "correct horse battery staple"


class CountingHasher(argon2.PasswordHasher):
    """The real argon2id hasher with the module's parameters, counting verify calls."""

    def __init__(self) -> None:
        super().__init__(
            time_cost=auth.ARGON2_TIME_COST,
            memory_cost=auth.ARGON2_MEMORY_COST_KIB,
            parallelism=auth.ARGON2_PARALLELISM,
            hash_len=auth.ARGON2_HASH_LEN,
            salt_len=auth.ARGON2_SALT_LEN,
        )
        self.verify_calls = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verify_calls += 1
        return super().verify(hash, password)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def alice_hash() -> str:
    return hash_password(PASSWORD)


def write_users(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "users"
    path.write_text(text, encoding="utf-8")
    return path


# --- users file -------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    store = UserStore()
    store.add("alice", PASSWORD, write=True)
    store.add("bob", "hunter2")
    path = tmp_path / "users"
    store.save(path)

    loaded = UserStore.load(path)
    assert loaded.users() == store.users()
    assert [u.name for u in loaded.users()] == ["alice", "bob"]
    assert loaded.get("alice") == User("alice", store.get("alice").password_hash, True)  # type: ignore[union-attr]
    assert loaded.get("bob").can_write is False  # type: ignore[union-attr]
    assert len(loaded) == 2
    assert "alice" in loaded
    assert "carol" not in loaded
    assert loaded.verify("alice", PASSWORD) is not None


def test_saved_file_mode_0600_and_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("# old\n")
    path.chmod(0o644)
    store = UserStore()
    store.add("alice", PASSWORD)
    store.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "alice:r:$argon2id$" in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users"]  # no temp file left


def test_save_into_missing_directory_is_local_file_error(tmp_path: Path) -> None:
    with pytest.raises(LocalFileError, match="cannot write users file"):
        UserStore().save(tmp_path / "nope" / "users")


def test_password_never_in_file(tmp_path: Path) -> None:
    store = UserStore()
    store.add("alice", PASSWORD)
    path = tmp_path / "users"
    store.save(path)
    data = path.read_bytes()
    assert PASSWORD.encode() not in data
    assert b"horse" not in data


def test_stored_hash_is_argon2id_with_owasp_parameters() -> None:
    store = UserStore()
    user = store.add("alice", PASSWORD)
    assert user.password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    params = argon2.extract_parameters(user.password_hash)
    assert params.type is argon2.Type.ID
    assert (params.memory_cost, params.time_cost, params.parallelism) == (19456, 2, 1)
    assert (params.hash_len, params.salt_len) == (32, 16)


def test_dummy_hash_has_the_same_parameters_as_real_ones(alice_hash: str) -> None:
    assert argon2.extract_parameters(auth._dummy_hash()) == argon2.extract_parameters(alice_hash)


def test_load_skips_blank_and_comment_lines(tmp_path: Path, alice_hash: str) -> None:
    path = write_users(tmp_path, f"# users\n\n   \n  # indented comment\nalice:rw:{alice_hash}\n")
    store = UserStore.load(path)
    assert [u.name for u in store.users()] == ["alice"]
    assert store.get("alice").can_write is True  # type: ignore[union-attr]


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"users file not found: .*missing"):
        UserStore.load(tmp_path / "missing")


def test_load_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_bytes(b"al\xffce:r:x\n")
    with pytest.raises(UsageError, match="not UTF-8"):
        UserStore.load(path)


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ("alice:rw", "expected NAME:PERMS:HASH"),
        ("alice", "expected NAME:PERMS:HASH"),
        ("alice:rw:{h}:extra", "expected NAME:PERMS:HASH"),
        ("alice:x:{h}", "permissions must be 'r' or 'rw'"),
        ("alice:RW:{h}", "permissions must be 'r' or 'rw'"),
        ("alice:rw:$argon2i$v=19$m=19456,t=2,p=1$abc$def", "argon2id"),
        ("alice:rw:plaintext", "argon2id"),
        ("alice:rw:$argon2id$garbage", "not a valid argon2id"),
        ("-alice:rw:{h}", "must not start with"),
        ("al ice:rw:{h}", "contains ' '"),
        ("élise:rw:{h}", "contains 'é'"),
        (":rw:{h}", "user name is empty"),
        ("bob:r:{h}", "duplicate user name 'bob'"),
    ],
)
def test_malformed_line_names_file_and_line(
    tmp_path: Path, alice_hash: str, bad_line: str, reason: str
) -> None:
    text = f"# header\n\nbob:r:{alice_hash}\n{bad_line.format(h=alice_hash)}\n"
    path = write_users(tmp_path, text)
    with pytest.raises(UsageError) as info:
        UserStore.load(path)
    message = str(info.value)
    assert f"{path}, line 4:" in message
    assert reason in message
    assert alice_hash not in message


# --- validation -------------------------------------------------------------------------


def test_validate_username_at_and_past_limit() -> None:
    validate_username("a" * MAX_USERNAME_BYTES)
    validate_username("a.b_c-d@e.example")
    with pytest.raises(UsageError, match="65 bytes"):
        validate_username("a" * (MAX_USERNAME_BYTES + 1))


@pytest.mark.parametrize("name", ["", ".hidden", "-opt", "a:b", "a/b", "a b", "\uff41", "x\0"])
def test_validate_username_rejects(name: str) -> None:
    with pytest.raises(UsageError, match="user name"):
        validate_username(name)


def test_validate_password_at_and_past_limit() -> None:
    validate_password("p" * MAX_PASSWORD_BYTES)
    validate_password("é" * (MAX_PASSWORD_BYTES // 2))  # 2 bytes each
    with pytest.raises(UsageError, match="1025 bytes"):
        validate_password("p" * (MAX_PASSWORD_BYTES + 1))
    with pytest.raises(UsageError, match="1026 bytes"):
        validate_password("é" * (MAX_PASSWORD_BYTES // 2 + 1))


@pytest.mark.parametrize(
    ("password", "reason"), [("", "empty"), ("a\0b", "NUL"), ("\ud800", "Unicode")]
)
def test_validate_password_rejects(password: str, reason: str) -> None:
    with pytest.raises(UsageError, match=reason) as info:
        validate_password(password)
    if password:
        assert password not in str(info.value)


# --- store editing ----------------------------------------------------------------------


def test_add_existing_needs_replace() -> None:
    store = UserStore()
    store.add("alice", PASSWORD)
    with pytest.raises(UsageError, match="already exists"):
        store.add("alice", "other")
    store.add("alice", "other", write=True, replace=True)
    assert store.verify("alice", "other") is not None
    assert store.verify("alice", PASSWORD) is None
    assert store.get("alice").can_write is True  # type: ignore[union-attr]


def test_add_rejects_bad_name_and_password() -> None:
    store = UserStore()
    with pytest.raises(UsageError):
        store.add("-x", PASSWORD)
    with pytest.raises(UsageError):
        store.add("x", "")
    assert len(store) == 0


def test_remove() -> None:
    store = UserStore()
    store.add("alice", PASSWORD)
    store.remove("alice")
    assert "alice" not in store
    with pytest.raises(UsageError, match="no such user"):
        store.remove("alice")


def test_constructor_rejects_duplicates(alice_hash: str) -> None:
    with pytest.raises(UsageError, match="duplicate"):
        UserStore([User("a", alice_hash), User("a", alice_hash)])


def test_user_repr_hides_hash(alice_hash: str) -> None:
    assert alice_hash not in repr(User("alice", alice_hash))


# --- verify -----------------------------------------------------------------------------


def test_verify_right_wrong_unknown(alice_hash: str) -> None:
    hasher = CountingHasher()
    store = UserStore([User("alice", alice_hash, can_write=True)], hasher=hasher)

    user = store.verify("alice", PASSWORD)
    assert user is not None
    assert user.name == "alice"
    assert user.can_write is True
    assert hasher.verify_calls == 1

    assert store.verify("alice", PASSWORD + "x") is None
    assert hasher.verify_calls == 2

    # Unknown user: exactly one argon2 verification too (against the dummy hash).
    assert store.verify("mallory", PASSWORD) is None
    assert hasher.verify_calls == 3


def test_verify_over_limits_returns_none_without_hashing(alice_hash: str) -> None:
    hasher = CountingHasher()
    long_password = "p" * (MAX_PASSWORD_BYTES + 1)
    long_hash = hasher.hash(long_password)  # a hash that *would* match if checked
    long_name = "a" * (MAX_USERNAME_BYTES + 1)
    store = UserStore(
        [User("alice", alice_hash), User("bob", long_hash), User(long_name, alice_hash)],
        hasher=hasher,
    )
    assert store.verify(long_name, PASSWORD) is None
    assert store.verify("bob", long_password) is None
    assert store.verify("alice", "\ud800") is None  # not encodable
    assert hasher.verify_calls == 0
    # The counter does count when the limits are respected.
    assert store.verify("alice", "p" * MAX_PASSWORD_BYTES) is None
    assert hasher.verify_calls == 1


def test_verify_swallows_argon2_errors() -> None:
    store = UserStore([User("alice", "$argon2id$v=19$m=19456,t=2,p=1$broken")])
    assert store.verify("alice", PASSWORD) is None
    store = UserStore([User("bob", "not a hash at all")])
    assert store.verify("bob", PASSWORD) is None


# --- create_default ---------------------------------------------------------------------


def test_create_default(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "users"
    store, password = create_default(path)

    assert len(password) == 24  # token_urlsafe(18)
    assert [u.name for u in store.users()] == [DEFAULT_USER]
    assert store.get(DEFAULT_USER).can_write is True  # type: ignore[union-attr]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700
    assert password not in path.read_text()

    loaded = UserStore.load(path)
    assert loaded.verify(DEFAULT_USER, password) is not None
    assert loaded.verify(DEFAULT_USER, password + "x") is None

    with pytest.raises(UsageError, match="already exists"):
        create_default(path)


def test_create_default_passwords_differ(tmp_path: Path) -> None:
    _, first = create_default(tmp_path / "one")
    _, second = create_default(tmp_path / "two")
    assert first != second


# --- LoginGuard -------------------------------------------------------------------------


def make_guard(**kwargs: float) -> tuple[LoginGuard, FakeClock]:
    clock = FakeClock()
    return LoginGuard(clock=clock, **kwargs), clock  # type: ignore[arg-type]


def test_guard_defaults() -> None:
    guard = LoginGuard()
    assert (guard.threshold, guard.base_penalty, guard.max_penalty) == (5, 10.0, 600.0)
    assert (guard.window, guard.max_tracked) == (600.0, 10000)


def test_guard_threshold() -> None:
    guard, _ = make_guard()
    for _ in range(4):
        guard.record_failure("1.2.3.4")
        assert guard.penalty_remaining("1.2.3.4") == 0.0
    guard.record_failure("1.2.3.4")
    assert guard.penalty_remaining("1.2.3.4") == 10.0


def test_guard_penalty_runs_out() -> None:
    guard, clock = make_guard(threshold=1)
    guard.record_failure("a")
    clock.now += 4.0
    assert guard.penalty_remaining("a") == pytest.approx(6.0)
    clock.now += 6.0
    assert guard.penalty_remaining("a") == 0.0


def test_guard_doubling_and_cap() -> None:
    guard, clock = make_guard(threshold=2, base_penalty=10.0, max_penalty=50.0)
    guard.record_failure("a")
    seen = []
    for _ in range(6):
        guard.record_failure("a")
        seen.append(guard.penalty_remaining("a"))
        clock.now += seen[-1]  # wait out the penalty, then fail again
    assert seen == [10.0, 20.0, 40.0, 50.0, 50.0, 50.0]


def test_guard_window_forgets_old_failures() -> None:
    guard, clock = make_guard(threshold=5, window=600.0)
    for _ in range(4):
        guard.record_failure("a")
    clock.now += 600.5
    guard.record_failure("a")
    assert guard.penalty_remaining("a") == 0.0
    # Within the window they add up.
    for _ in range(3):
        guard.record_failure("a")
    assert guard.penalty_remaining("a") == 0.0
    guard.record_failure("a")
    assert guard.penalty_remaining("a") == 10.0


def test_guard_success_clears_count_not_penalty() -> None:
    guard, clock = make_guard(threshold=3)
    guard.record_failure("a")
    guard.record_failure("a")
    guard.record_success("a")
    guard.record_failure("a")
    guard.record_failure("a")
    assert guard.penalty_remaining("a") == 0.0  # count restarted at zero

    guard.record_failure("a")
    assert guard.penalty_remaining("a") == 10.0
    guard.record_success("a")
    assert guard.penalty_remaining("a") == 10.0  # the active penalty stays
    guard.record_failure("a")  # first failure of a new count: no longer penalty
    assert guard.penalty_remaining("a") == 10.0
    clock.now += 10.0
    assert guard.penalty_remaining("a") == 0.0


def test_guard_addresses_are_isolated() -> None:
    guard, _ = make_guard(threshold=2)
    guard.record_failure("10.0.0.1")
    guard.record_failure("10.0.0.1")
    guard.record_failure("10.0.0.2")
    guard.record_success("10.0.0.3")
    assert guard.penalty_remaining("10.0.0.1") == 10.0
    assert guard.penalty_remaining("10.0.0.2") == 0.0
    assert guard.penalty_remaining("10.0.0.3") == 0.0
    guard.record_success("10.0.0.2")
    assert guard.penalty_remaining("10.0.0.1") == 10.0


def test_guard_max_tracked_evicts_least_recent() -> None:
    guard, _ = make_guard(threshold=1, max_tracked=2)
    guard.record_failure("a")
    guard.record_failure("b")
    guard.record_failure("a")  # "a" is now more recent than "b"
    guard.record_failure("c")  # evicts "b"
    assert len(guard) == 2
    assert guard.penalty_remaining("b") == 0.0
    assert guard.penalty_remaining("a") > 0.0
    assert guard.penalty_remaining("c") > 0.0


def test_guard_memory_is_bounded() -> None:
    guard, _ = make_guard(max_tracked=100)
    for i in range(1000):
        guard.record_failure(f"192.0.2.{i}")
    assert len(guard) == 100
    assert guard.penalty_remaining("192.0.2.999") == 0.0  # one failure, under threshold


def test_guard_forgets_idle_addresses() -> None:
    guard, clock = make_guard(threshold=1)
    guard.record_failure("a")
    clock.now += 601.0
    assert guard.penalty_remaining("a") == 0.0
    assert len(guard) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 0},
        {"max_tracked": 0},
        {"base_penalty": 0.0},
        {"base_penalty": 20.0, "max_penalty": 10.0},
        {"window": 0.0},
    ],
)
def test_guard_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(UsageError):
        LoginGuard(**kwargs)  # type: ignore[arg-type]


def test_all_is_complete() -> None:
    defined = {
        name
        for name, value in vars(auth).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == auth.__name__
    }
    constants = {name for name in vars(auth) if name.startswith("ARGON2_")} | {"DEFAULT_USER"}
    assert set(auth.__all__) == defined | constants
    assert all(hasattr(auth, name) for name in auth.__all__)


def test_a_starting_server_makes_the_unknown_user_hash(tmp_path: Path) -> None:
    """Made as the server starts, not at the first unknown login (which would then take
    longer than the next ones), nor at import (where a client would pay for it)."""
    from tcpft.config import ServerConfig
    from tcpft.server import Server

    auth._dummy_hash.cache_clear()
    config = ServerConfig(
        root=tmp_path, host="127.0.0.1", port=0, plaintext=True, state_dir=tmp_path / "state"
    )

    async def start() -> int:
        async with Server(config, UserStore(), None):
            return auth._dummy_hash.cache_info().currsize

    assert asyncio.run(start()) == 1


def test_users_file_lock_is_exclusive_and_beside_the_file(tmp_path: Path) -> None:
    path = tmp_path / "users"
    with lock_users_file(path):
        fd = os.open(tmp_path / "users.lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # held: another taker would wait
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    with lock_users_file(path):  # released on leaving
        pass
    assert not path.exists()


def test_users_file_lock_in_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(LocalFileError, match="lock file"), lock_users_file(tmp_path / "no" / "u"):
        pass
