"""Configuration files: bad ones are refused naming the key and the file; the samples document every key; a
daemon that cannot reach ZooKeeper says so and exits."""
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pvc import config
from pvc.cli.localcluster.processes import free_port
from pvc.errors import ConfigError

CONTRIB = Path(__file__).parent.parent / "contrib"
SAMPLES = {"pvcnoded": (CONTRIB / "pvcnoded.yaml", config.NODED_SETTINGS),
           "pvcapid": (CONTRIB / "pvcapid.yaml", config.APID_SETTINGS)}


def sample_values(program: str) -> dict:
    return yaml.safe_load(SAMPLES[program][0].read_text())


def write_config(tmp_path: Path, values: dict) -> Path:
    path = tmp_path / "pvcnoded.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_a_missing_key_is_named_with_the_file(tmp_path):
    values = sample_values("pvcnoded")
    del values["zookeeper_password"]
    path = write_config(tmp_path, values)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: missing required key 'zookeeper_password'"):
        config.load(path, config.NODED_SETTINGS)


def test_a_mistyped_key_is_named_with_the_file_and_a_suggestion(tmp_path):
    values = sample_values("pvcnoded")
    values["keepalive_intervall"] = values.pop("keepalive_interval")
    path = write_config(tmp_path, values)
    with pytest.raises(ConfigError) as error:
        config.load(path, config.NODED_SETTINGS)
    assert str(error.value) == (f"{path}: unknown key 'keepalive_intervall' "
                                "(did you mean 'keepalive_interval'?)")


@pytest.mark.parametrize("key, value", [("keepalive_interval", "five"), ("bmc_port", 623.5),
                                        ("zookeeper_hosts", 2181), ("keepalive_interval", True)])
def test_a_value_of_the_wrong_type_is_named_with_the_file(tmp_path, key, value):
    values = {**sample_values("pvcnoded"), key: value}
    path = write_config(tmp_path, values)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: key '{key}' must be a"):
        config.load(path, config.NODED_SETTINGS)


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "pvcapid.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        config.load(path, config.APID_SETTINGS)


@pytest.mark.parametrize("program", SAMPLES)
def test_every_setting_is_documented_in_the_sample_and_the_sample_loads(program):
    path, settings = SAMPLES[program]
    lines = path.read_text().splitlines()
    for setting in settings:
        at = next((index for index, line in enumerate(lines) if line.startswith(f"{setting.name}:")), None)
        assert at is not None, f"{setting.name} is not in {path}"
        comments_above = [line for line in lines[max(at - 3, 0):at] if line.startswith("#")]
        documented_together = lines[at - 1].split(":")[0] in {s.name for s in settings}
        assert comments_above or documented_together, f"{setting.name} has no comment in {path}"
    loaded = config.load(path, settings)
    assert set(loaded) == {setting.name for setting in settings}


def daemon(program: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name(program)), *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("program, extra", [
    ("pvcnoded", ["--libvirt-uri", "test:///default"]),
    ("pvcapid", []),
])
def test_a_daemon_that_cannot_reach_zookeeper_exits_with_one_clear_line(program, extra):
    unreachable = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = daemon(program, "--config", str(SAMPLES[program][0]), "--zookeeper-hosts", unreachable,
                    "--zookeeper-connect-timeout", "2", "--listen-address", "127.0.0.1:0", *extra)
    took = time.monotonic() - started

    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{program}: error: ")]
    assert errors == [f"{program}: error: ZooKeeper at {unreachable} did not answer within 2 s"], result.stderr
    assert result.stderr.splitlines()[-1] == errors[0]
    assert "Traceback" not in result.stderr
    assert took < 10


def test_a_daemon_with_a_bad_config_file_exits_naming_key_and_file(tmp_path):
    values = {**sample_values("pvcapid"), "leader_tik": 1}
    path = tmp_path / "pvcapid.yaml"
    path.write_text(yaml.safe_dump(values))
    result = daemon("pvcapid", "--config", str(path))
    assert result.returncode != 0
    assert result.stderr == f"pvcapid: error: {path}: unknown key 'leader_tik' (did you mean 'leader_tick'?)\n"


def test_a_missing_config_file_is_one_clear_line(tmp_path):
    result = daemon("pvcnoded", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode != 0
    assert result.stderr.startswith(f"pvcnoded: error: cannot read config file {tmp_path / 'absent.yaml'}")
    assert result.stderr.count("\n") == 1
