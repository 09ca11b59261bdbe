from __future__ import annotations

import pathlib

import attrs
import pytest

from darktower.config import ConfigError, build_parser, load, option, to_argv


@attrs.frozen
class Settings:
    host: str = option("127.0.0.1", "bind address")
    port: int = option(4433, "UDP port")
    debug: bool = option(False, "debug logging")
    origins: list[str] = option(attrs.Factory(list), "allowed origins")


def test_defaults() -> None:
    assert load(Settings, [], environ={}) == Settings()


def test_precedence_flags_over_env_over_file(tmp_path: pathlib.Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('host = "10.1.1.1"\nport = 1\norigins = ["x"]\n')
    env = {"DARKTOWER_PORT": "2", "DARKTOWER_DEBUG": "true"}
    s = load(Settings, ["--config", str(cfg), "--port", "3"], environ=env)
    assert s == Settings(host="10.1.1.1", port=3, debug=True, origins=["x"])
    s = load(Settings, ["--config", str(cfg)], environ=env)
    assert s.port == 2


def test_list_from_env_and_bool_flag() -> None:
    s = load(
        Settings, ["--no-debug"], environ={"DARKTOWER_ORIGINS": "a, b", "DARKTOWER_DEBUG": "1"}
    )
    assert s.origins == ["a", "b"]
    assert s.debug is False


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--port", "nope"], {}, "port"),
        ([], {"DARKTOWER_DEBUG": "maybe"}, "DARKTOWER_DEBUG"),
    ],
)
def test_bad_values_name_the_option(argv: list[str], env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load(Settings, argv, environ=env)


def test_unknown_key_in_file(tmp_path: pathlib.Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("colour = 1\n")
    with pytest.raises(ConfigError, match="colour"):
        load(Settings, ["--config", str(cfg)], environ={})


def test_help_documents_every_option() -> None:
    text = build_parser(Settings, "x", "").format_help()
    for flag in ("--host", "--port", "--debug", "--origins", "--config"):
        assert flag in text
    assert "UDP port" in text


@pytest.mark.parametrize(
    "settings",
    [
        Settings(),
        Settings(host="10.0.0.1", port=1, debug=True, origins=["https://a", "https://b"]),
    ],
)
def test_to_argv_gives_the_same_settings_back(settings: Settings) -> None:
    assert load(Settings, to_argv(settings), environ={}) == settings
