"""Server settings: the TOML config file, validation, and size parsing."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tcpft.config import DEFAULT_PORT, ServerConfig, check_host, load_config, parse_size
from tcpft.errors import UsageError

MIB = 1024 * 1024


def write(tmp_path: Path, text: str, name: str = "tcpft.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_config(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
root = "served"
state_dir = "state/dir"
users_file = "/etc/tcpft/users"
host = "127.0.0.1"
port = 9000
plaintext = true
login_timeout = 5
idle_timeout = 12.5
max_connections = 10
chunk_size = 65536
limit_rate = "10M"
max_upload_size = 1000
""",
    )
    cfg = load_config(path)
    assert cfg.root == tmp_path / "served"
    assert cfg.state_dir == tmp_path / "state" / "dir"
    assert cfg.users_file == Path("/etc/tcpft/users")
    assert cfg.users_path() == Path("/etc/tcpft/users")
    assert cfg.host == "127.0.0.1"
    assert cfg.port == 9000
    assert cfg.plaintext is True
    assert cfg.login_timeout == 5.0 and isinstance(cfg.login_timeout, float)
    assert cfg.idle_timeout == 12.5
    assert cfg.max_connections == 10
    assert cfg.chunk_size == 65536
    assert cfg.limit_rate == 10 * MIB
    assert cfg.max_upload_size == 1000
    # Untouched keys keep their defaults.
    assert cfg.max_login_attempts == ServerConfig().max_login_attempts


def test_relative_paths_follow_the_file_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = write(conf_dir, 'root = "../served"\naudit_json = "audit.jsonl"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(path)
    assert cfg.root == conf_dir / ".." / "served"
    assert cfg.root.resolve() == (tmp_path / "served").resolve()
    assert cfg.audit_json == conf_dir / "audit.jsonl"


def test_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = load_config(write(tmp_path, 'root = "~/share"\n'))
    assert cfg.root == tmp_path / "home" / "share"


def test_empty_host_means_every_interface(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, 'host = ""\n')).host is None


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg.port == DEFAULT_PORT


def test_base_is_overridden_not_mutated(tmp_path: Path) -> None:
    base = ServerConfig(root=tmp_path, port=1234, max_connections=7)
    cfg = load_config(write(tmp_path, "port = 4321\n"), base)
    assert cfg.port == 4321
    assert cfg.max_connections == 7
    assert base.port == 1234


def test_unknown_key(tmp_path: Path) -> None:
    path = write(tmp_path, "prot = 80\n", name="odd-name.toml")
    with pytest.raises(UsageError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "prot" in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        'port = "80"',
        "port = 80.0",
        "port = true",
        'login_timeout = "5"',
        "login_timeout = true",
        "plaintext = 1",
        "root = 5",
        "host = 127",
        "max_connections = [1]",
        'chunk_size = "64K"',
        "max_upload_size = 1.5",
    ],
)
def test_wrong_type(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text + "\n", name="typed.toml")
    with pytest.raises(UsageError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert text.split()[0] in str(info.value)


@pytest.mark.parametrize("text", ["port = ", "[unclosed", "port = 1\nport = 2", "a = 'b"])
def test_bad_toml(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text, name="broken.toml")
    with pytest.raises(UsageError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "TOML" in str(info.value)


def test_file_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'host = "caf\xe9"\n')
    with pytest.raises(UsageError, match="not UTF-8") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_file_nested_too_deeply_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "port = " + "[" * 100_000 + "\n", name="deep.toml")
    with pytest.raises(UsageError, match="not valid TOML") as info:
        load_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("key", ["root", "audit_json", "users_file", "state_dir", "cert_file"])
def test_nul_in_a_path_is_refused(tmp_path: Path, key: str) -> None:
    path = write(tmp_path, f'{key} = "a\\u0000b"\n', name="nul.toml")
    with pytest.raises(UsageError, match="NUL") as info:
        load_config(path)
    assert f"config file {path}: {key}: " in str(info.value)


def test_home_of_no_such_user_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'root = "~tcpft-no-such-user-x/files"\n', name="tilde.toml")
    with pytest.raises(UsageError, match="cannot expand") as info:
        load_config(path)
    assert f"config file {path}: root: " in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(UsageError) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_out_of_range_value_in_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        load_config(write(tmp_path, "port = 70000\n"))


def test_out_of_range_value_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 70000\n", name="ranged.toml")
    with pytest.raises(UsageError) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_nan_timeout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        load_config(write(tmp_path, "login_timeout = nan\n"))


@pytest.mark.parametrize("host", ["a\\u0000b", "a..b", "a b", "\\u00ff\\u00ff." * 100])
def test_bad_host_in_the_file_is_refused(tmp_path: Path, host: str) -> None:
    path = write(tmp_path, f'host = "{host}"\n', name="hosted.toml")
    with pytest.raises(UsageError, match="not a valid host name") as info:
        load_config(path)
    assert f"config file {path}: host: " in str(info.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "fe80::1%lo", "localhost", "b\u00fccher.de"])
def test_good_hosts_pass(host: str) -> None:
    assert check_host(host) == host


# --- validate ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("port", 70000),
        ("port", 65536),
        ("port", -1),
        ("chunk_size", 0),
        ("chunk_size", 2 * MIB),
        ("chunk_size", MIB + 1),
        ("login_timeout", 0.0),
        ("login_timeout", -1.0),
        ("idle_timeout", 0.0),
        ("stall_timeout", 0.0),
        ("max_login_attempts", 0),
        ("max_connections", 0),
        ("max_per_address", 0),
        ("max_concurrent_hashes", 0),
        ("max_list_entries", 0),
        ("max_list_bytes", 0),
        ("limit_rate", 0),
        ("limit_rate", -5),
    ],
)
def test_validate_refuses(tmp_path: Path, field: str, value: object) -> None:
    cfg = ServerConfig(root=tmp_path, state_dir=tmp_path)
    setattr(cfg, field, value)
    with pytest.raises(UsageError) as info:
        cfg.validate()
    assert field in str(info.value) or str(value) in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_upload_size", 0),
        ("max_upload_size", -1),
        ("upload_reserve", -1),
        ("login_failure_delay", math.nan),
        ("login_failure_delay", math.inf),
        ("login_failure_delay", -1.0),
        ("shutdown_grace", math.nan),
        ("shutdown_grace", math.inf),
        ("shutdown_grace", -0.5),
        ("penalty_base", math.inf),
        ("penalty_base", math.nan),
        ("penalty_base", 0.0),
        ("penalty_max", math.inf),
        ("penalty_max", math.nan),
    ],
)
def test_validate_refuses_naming_the_key(tmp_path: Path, field: str, value: object) -> None:
    cfg = ServerConfig(root=tmp_path, state_dir=tmp_path)
    setattr(cfg, field, value)
    with pytest.raises(UsageError, match=rf"^{field} must be "):
        cfg.validate()


def test_penalty_base_above_penalty_max_names_both_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "penalty_base = 60\npenalty_max = 30\n", name="penalty.toml")
    with pytest.raises(UsageError) as info:
        load_config(path)
    assert (
        str(info.value)
        == f"config file {path}: penalty_base (60) must not be above penalty_max (30)"
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("port", 0),
        ("port", 65535),
        ("chunk_size", 1),
        ("chunk_size", MIB),
        ("limit_rate", 1),
        ("max_upload_size", 1),
        ("upload_reserve", 0),
        ("login_failure_delay", 0.0),
        ("shutdown_grace", 0.0),
    ],
)
def test_validate_accepts_limits(tmp_path: Path, field: str, value: object) -> None:
    cfg = ServerConfig(root=tmp_path, state_dir=tmp_path)
    setattr(cfg, field, value)
    cfg.validate()


def test_validate_defaults_pass(tmp_path: Path) -> None:
    ServerConfig(root=tmp_path, state_dir=tmp_path).validate()


def test_cert_and_key_go_together(tmp_path: Path) -> None:
    cfg = ServerConfig(root=tmp_path, state_dir=tmp_path, cert_file=tmp_path / "c.pem")
    with pytest.raises(UsageError):
        cfg.validate()
    cfg.key_file = tmp_path / "k.pem"
    cfg.validate()


def test_users_path_default(tmp_path: Path) -> None:
    assert ServerConfig(state_dir=tmp_path).users_path() == tmp_path / "users"


def test_as_dict_has_strings_for_paths(tmp_path: Path) -> None:
    d = ServerConfig(root=tmp_path, state_dir=tmp_path).as_dict()
    assert d["root"] == str(tmp_path)
    assert d["port"] == DEFAULT_PORT
    assert d["users_file"] is None


# --- parse_size ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10M", 10 * MIB),
        ("512K", 512 * 1024),
        ("1G", 1024**3),
        ("1T", 1024**4),
        ("1.5M", 1572864),
        ("100", 100),
        ("10MiB", 10 * MIB),
        ("10MB", 10 * MIB),
        ("10m", 10 * MIB),
        ("4kib", 4096),
        (" 2K ", 2048),
        ("0.5K", 512),
        ("7B", 7),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["", " ", "abc", "M", "K10", "10X", "1.2.3", "-1", "0", "0K", "-5M", "10 MB extra"]
)
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


@pytest.mark.parametrize("text", ["nan", "inf", "1e400", "0.1"])
def test_parse_size_refuses_non_finite_and_sub_byte(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


@pytest.mark.parametrize("text", ["1e300T", "1e300", "9.3e18", "8388608T", "1e19"])
def test_parse_size_refuses_what_overflows(text: str) -> None:
    with pytest.raises(UsageError, match="too large"):
        parse_size(text)


def test_parse_size_accepts_up_to_a_file_offset() -> None:
    assert parse_size("8388607T") == 8388607 * 1024**4
    assert parse_size(str(2**62)) == 2**62


def test_huge_size_in_the_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'max_upload_size = "1e300T"\n', name="huge.toml")
    with pytest.raises(UsageError, match="too large") as info:
        load_config(path)
    assert str(path) in str(info.value) and "max_upload_size" in str(info.value)


def test_bad_size_in_the_file_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, 'limit_rate = "1.5Q"\n', name="sized.toml")
    with pytest.raises(UsageError, match="not a size") as info:
        load_config(path)
    assert f"config file {path}: limit_rate: " in str(info.value)


def test_parse_size_results_are_positive_ints() -> None:
    for text in ("1", "1K", "1.25M", "3G"):
        value = parse_size(text)
        assert isinstance(value, int)
        assert value > 0
        assert not math.isnan(value)
