"""modelfs.registry.config: the configuration file, its defaults and its one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfs.errors import UsageError
from modelfs.registry import config as config_module
from modelfs.registry.config import FileConfig, config_path, load_config


@pytest.fixture(autouse=True)
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DOCKER_CONFIG", str(home / ".docker"))
    monkeypatch.setenv("MODELFS_KEY", str(home / ".ollama" / "id_ed25519"))
    monkeypatch.delenv("MODELFS_CONFIG", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return home


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / "etc" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_missing_file_is_an_empty_configuration(tmp_path):
    cfg = load_config(tmp_path / "nope" / "config.toml")
    assert cfg == FileConfig()
    assert cfg.mirrors == {} and cfg.insecure_hosts == () and cfg.ca_file is None


def test_empty_file_is_an_empty_configuration(tmp_path):
    path = write(tmp_path, "")
    assert load_config(path) == FileConfig(path=path)


def test_the_docstring_example_parses(tmp_path):
    doc = config_module.__doc__
    assert doc is not None
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    path = write(tmp_path, example)
    cfg = load_config(path)
    assert cfg.path == path
    assert cfg.ca_file == "/etc/ssl/certs/company-ca.pem"
    assert cfg.key == "/root/.ollama/id_ed25519"
    assert cfg.insecure_hosts == ("registry.lan:5000",)
    assert cfg.tls_hosts == ("127.0.0.1:5443",)
    assert cfg.mirrors == {"registry.ollama.ai": ("http://mirror.lan:5000",)}


def test_mirrors_are_lowercased_merged_and_lose_trailing_slashes(tmp_path):
    path = write(
        tmp_path,
        """
[[mirror]]
host = "Registry.Ollama.AI"
endpoints = ["http://m1.lan:5000/", "https://m2.lan/prefix/"]
[[mirror]]
host = "registry.ollama.ai"
endpoints = ["http://m3.lan"]
[[mirror]]
host = "docker.io"
endpoints = []
""",
    )
    assert load_config(path).mirrors == {
        "registry.ollama.ai": ("http://m1.lan:5000", "https://m2.lan/prefix", "http://m3.lan"),
        "docker.io": (),
    }


def test_only_mirrors_that_ask_for_it_get_the_origins_credentials(tmp_path):
    path = write(
        tmp_path,
        """
[[mirror]]
host = "registry.ollama.ai"
endpoints = ["http://m1.lan:5000/", "http://m2.lan"]
credentials = "origin"
[[mirror]]
host = "registry.ollama.ai"
endpoints = ["http://m3.lan"]
[[mirror]]
host = "docker.io"
endpoints = ["http://m4.lan"]
credentials = "mirror"
""",
    )
    assert load_config(path).origin_credentials == {
        ("registry.ollama.ai", "http://m1.lan:5000"),
        ("registry.ollama.ai", "http://m2.lan"),
    }


def test_registry_flags_false_add_nothing(tmp_path):
    path = write(
        tmp_path,
        """
[[registry]]
host = "a.lan"
insecure = false
[[registry]]
host = "b.lan"
tls = false
[[registry]]
host = "c.lan"
insecure = true
[[registry]]
host = "d.lan"
""",
    )
    cfg = load_config(path)
    assert cfg.insecure_hosts == ("c.lan",)
    assert cfg.tls_hosts == ()


def test_relative_paths_resolve_against_the_config_directory(tmp_path, private_home):
    path = write(tmp_path, 'ca_file = "certs/ca.pem"\nkey = "~/keys/id_ed25519"\n')
    cfg = load_config(path)
    assert cfg.ca_file == str(path.parent / "certs" / "ca.pem")
    assert cfg.key == str(private_home / "keys" / "id_ed25519")


def test_config_path_defaults_and_environment(private_home, tmp_path, monkeypatch):
    assert config_path() == private_home / ".config" / "modelfs" / "config.toml"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_path() == tmp_path / "xdg" / "modelfs" / "config.toml"
    monkeypatch.setenv("MODELFS_CONFIG", str(tmp_path / "mine.toml"))
    assert config_path() == tmp_path / "mine.toml"


def test_load_config_reads_the_environments_file(tmp_path, monkeypatch):
    path = write(tmp_path, '[[registry]]\nhost = "env.lan"\ninsecure = true\n', "mine.toml")
    monkeypatch.setenv("MODELFS_CONFIG", str(path))
    cfg = load_config()
    assert cfg.path == path
    assert cfg.insecure_hosts == ("env.lan",)


def test_load_config_reads_xdg(tmp_path, monkeypatch):
    xdg = tmp_path / "xdg"
    (xdg / "modelfs").mkdir(parents=True)
    (xdg / "modelfs" / "config.toml").write_text('[[registry]]\nhost = "x.lan"\ntls = true\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    assert load_config().tls_hosts == ("x.lan",)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("key = ", "not valid TOML"),
        ("[[registry]\nhost = 'a'", "not valid TOML"),
        ('cache = "/var/cache"', "unknown setting 'cache'"),
        ("ca_file = 5", "ca_file must be a path"),
        ("key = ['a']", "key must be a path"),
        ('[registry]\nhost = "a"', "[[registry]] must be an array of tables"),
        ('registry = ["a.lan"]', "each [[registry]] needs host"),
        ("[[registry]]\ninsecure = true", "each [[registry]] needs host"),
        ("[[registry]]\nhost = 5", "each [[registry]] needs host"),
        ('[[registry]]\nhost = "a"\nmirror = "b"', "unknown [[registry]] setting 'mirror'"),
        (
            '[[registry]]\nhost = "a.lan"\ninsecure = true\ntls = true',
            "registry a.lan cannot be both insecure and tls",
        ),
        ('[[registry]]\nhost = "a.lan"\ninsecure = "false"', "insecure must be true or false"),
        ('[[registry]]\nhost = "a.lan"\ntls = 1', "tls must be true or false"),
        ('[mirror]\nhost = "a"\nendpoints = []', "[[mirror]] must be an array of tables"),
        ("[[mirror]]\nendpoints = []", "each [[mirror]] needs host"),
        ('[[mirror]]\nhost = "a.lan"', "mirror of a.lan: endpoints must be a list of URLs"),
        (
            '[[mirror]]\nhost = "a.lan"\nendpoints = "http://m"',
            "mirror of a.lan: endpoints must be a list of URLs",
        ),
        (
            '[[mirror]]\nhost = "a.lan"\nendpoints = [1]',
            "mirror of a.lan: endpoints must be a list of URLs",
        ),
        (
            '[[mirror]]\nhost = "a.lan"\nendpoints = ["mirror.lan:5000"]',
            "mirror of a.lan: 'mirror.lan:5000' is not an http(s) URL",
        ),
        (
            '[[mirror]]\nhost = "a.lan"\nendpoints = ["ftp://m.lan"]',
            "mirror of a.lan: 'ftp://m.lan' is not an http(s) URL",
        ),
        (
            '[[mirror]]\nhost = "a.lan"\nendpoints = ["https://"]',
            "mirror of a.lan: 'https://' is not an http(s) URL",
        ),
        (
            '[[mirror]]\nhost = "a.lan"\nendpoints = []\ncredentials = "yes"',
            'mirror of a.lan: credentials must be "mirror" or "origin"',
        ),
        (
            '[[mirror]]\nhost = "a.lan"\nendpoints = []\ntoken = "x"',
            "unknown [[mirror]] setting 'token'",
        ),
    ],
)
def test_invalid_configurations_are_one_line_usage_errors(tmp_path, text, why):
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg
    assert why in msg
    assert "\n" not in msg


def test_unreadable_configuration_is_a_usage_error(tmp_path):
    path = tmp_path / "config.toml"
    path.mkdir()  # a directory: unreadable as a file, even as root
    with pytest.raises(UsageError) as e:
        load_config(path)
    assert str(path) in str(e.value)
    assert "\n" not in str(e.value)


def test_non_utf8_configuration_is_a_usage_error(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b'key = "\xff\xfe"\n')
    with pytest.raises(UsageError) as e:
        load_config(path)
    assert str(path) in str(e.value)
