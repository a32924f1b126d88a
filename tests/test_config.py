"""``serve`` options: flag beats ``MQTTPUSH_*`` variable beats TOML file beats default."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.conftest import ServeProcess, cli


def test_toml_env_and_flag_precedence(tmp_path: Path) -> None:
    conf = tmp_path / "mqttpush.toml"
    conf.write_text(f'[mqttpush]\ndata_dir = "{tmp_path / "from-toml"}"\nmqtt_port = 0\nhttp-port = 0\n')
    s = ServeProcess(None, None, None, "--config", str(conf))
    assert s.data_dir == str(tmp_path / "from-toml")
    assert s.stop(signal.SIGTERM) == 0

    env = {"MQTTPUSH_DATA_DIR": str(tmp_path / "from-env")}
    s = ServeProcess(None, None, None, "--config", str(conf), env=env)
    assert s.data_dir == str(tmp_path / "from-env")
    assert s.stop(signal.SIGTERM) == 0

    s = ServeProcess(tmp_path / "from-flag", None, None, "--config", str(conf), env=env)
    assert s.data_dir == str(tmp_path / "from-flag")
    assert s.stop(signal.SIGTERM) == 0
    assert (tmp_path / "from-flag" / "mqttpush.db").exists()


def test_bad_config_names_the_flag(tmp_path: Path) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text("mqtt_prot = 1\n")
    proc = cli("serve", "--config", str(conf))
    assert proc.returncode == 2
    assert "--config" in proc.stderr and "mqtt_prot" in proc.stderr
    proc = cli("serve", "--config", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2 and "--config" in proc.stderr
    proc = cli("serve", "--mqtt-port", "70000")
    assert proc.returncode == 2 and "--mqtt-port" in proc.stderr
