"""The daemon as users run it: `sop robot run` in-process and as a real subprocess killed with SIGKILL,
TLS with a CA file, robot tokens, heartbeats and the Prometheus endpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from fake_learner import FakeLearner
from robot_fakes import (
    ConfigFactory,
    FakePolicy,
    FakeRobot,
    fake_policy_loader,
    write_tiny_diffusion_checkpoint,
)

from robot_client.config import MetricsConfig, RobotConfig
from robot_client.daemon import RobotDaemon, main, spawn_daemon_process
from robot_client.metrics import RobotMetrics
from robot_client.recorder import Spool
from sop.credentials import TokenRegistry
from sop.data.episode_store import MARKER_FILE, EpisodeStore
from sop.episode import Outcome

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def diffusion_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_diffusion_checkpoint(tmp_path_factory.mktemp("checkpoint") / "v1", version=1)


def cli_args(data_dir: Path, checkpoint: Path, *extra: str) -> list[str]:
    return [
        "--config",
        "configs/robot.yaml",
        "--robot_id",
        "robot-1",
        "--data_dir",
        str(data_dir),
        "--robot.type",
        "factory",
        "--robot.factory",
        "robot_fakes:make_fake_robot",
        "--policy.base_checkpoint",
        str(checkpoint),
        "--metrics.log_interval_s",
        "0",
        "--spool.flush_every_steps",
        "5",
        *extra,
    ]


def test_sop_robot_run_offline_records_episodes_with_the_real_policy_loader(
    tmp_path: Path, diffusion_checkpoint: Path
) -> None:
    args = cli_args(
        tmp_path,
        diffusion_checkpoint,
        "--control.max_episodes",
        "2",
        "--control.max_episode_steps",
        "6",
        "--control.free_running",
        "true",
    )
    assert main(args) == 0
    config = RobotConfig(robot_id="robot-1", data_dir=str(tmp_path))
    spool = Spool(config.spool_dir, config.quarantine_dir, config.spool, RobotMetrics("check"))
    infos = spool.pending()
    assert [i.num_steps for i in infos] == [6, 6]
    assert all(set(spool.read(i.episode_id).steps["policy_version"].tolist()) == {1} for i in infos)


@pytest.mark.slow
def test_a_daemon_killed_with_sigkill_recovers_its_spool_on_restart(
    tmp_path: Path, diffusion_checkpoint: Path, learner: FakeLearner, robot_config: ConfigFactory
) -> None:
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = cli_args(
        tmp_path, diffusion_checkpoint, "--control.rate_hz", "100", "--control.max_episode_steps", "100000"
    )
    process = spawn_daemon_process(args, env=env, log_file=tmp_path / "daemon.log")
    config = replace(robot_config(learner.address), data_dir=str(tmp_path))
    try:
        deadline = time.monotonic() + 60
        flushed = 0
        while time.monotonic() < deadline and flushed < 20:
            assert process.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            time.sleep(0.1)
            if (config.spool_dir / MARKER_FILE).exists():  # the daemon has created its spool
                store = EpisodeStore(config.spool_dir, create=False)
                flushed = max((p.num_steps_flushed for p in store.partial_episodes()), default=0)
        assert flushed >= 20, "the daemon never recorded 20 steps"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    assert process.returncode == -signal.SIGKILL

    restarted = RobotDaemon(
        config, robot=FakeRobot(), policy_loader=fake_policy_loader, base_policy=FakePolicy(1)
    )
    restarted.start(max_episodes=1)
    assert restarted.wait(20)
    assert restarted.wait_for_uploads(15)
    restarted.stop()
    (killed_episode,) = restarted.recovered
    episode = learner.state.committed[killed_episode]
    assert episode.outcome is Outcome.ABORTED
    assert episode.num_steps >= 20
    # The crashed run's policy was the diffusion checkpoint; the restart kept it (last good / base).
    assert set(episode.steps["policy_version"].tolist()) == {1}
    assert len(learner.state.committed) == 2


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost, made with the openssl command."""
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_cert),
        "-days",
        "2",
        "-subj",
        "/CN=sop-test-ca",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        "/CN=localhost",
    )
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_cert),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        "2",
        "-extfile",
        str(ext),
    )
    return ca_cert, cert, key


def test_tls_and_robot_tokens(tmp_path: Path, robot_config: ConfigFactory) -> None:
    ca, cert, key = make_certificates(tmp_path)
    tokens = TokenRegistry({})
    tokens.add("robot-1", "the-right-token")
    learner = FakeLearner()
    learner.state.tokens = tokens
    learner.credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    learner.start()
    try:
        token_file = tmp_path / "token"
        token_file.write_text("the-right-token\n")
        config = robot_config(learner.address)
        secure = replace(
            config, learner=replace(config.learner, tls_ca_file=str(ca), token_file=str(token_file))
        )
        daemon = RobotDaemon(
            secure, robot=FakeRobot(), base_policy=FakePolicy(1), policy_loader=fake_policy_loader
        )
        daemon.start(max_episodes=1)
        assert daemon.wait(10) and daemon.wait_for_uploads(10)
        daemon.stop()
        assert len(learner.state.committed) == 1
        assert learner.state.registrations[0].capabilities.state_dim == 4

        # A wrong token: refused, counted, and the episode stays in the spool (not lost).
        token_file.write_text("a-wrong-token")
        wrong = replace(secure, data_dir=str(tmp_path / "other"))
        refused = RobotDaemon(
            wrong, robot=FakeRobot(), base_policy=FakePolicy(1), policy_loader=fake_policy_loader
        )
        refused.start(max_episodes=1)
        assert refused.wait(10)
        assert not refused.wait_for_uploads(1.0)
        refused.stop()
        errors = {
            (s.labels["rpc"], s.labels["code"])
            for family in refused.metrics.rpc_errors.collect()
            for s in family.samples
            if s.name.endswith("_total")
        }
        assert ("Register", "UNAUTHENTICATED") in errors
        assert refused.spool is not None and len(refused.spool.pending()) == 1
        assert refused.metrics.snapshot()["upload_retries"] >= 1

        # Plaintext against a TLS learner fails too (nothing falls back to an unencrypted channel).
        plain = RobotDaemon(
            replace(wrong, data_dir=str(tmp_path / "plain"), learner=config.learner),
            robot=FakeRobot(),
            base_policy=FakePolicy(1),
        )
        plain.start(max_episodes=1)
        assert plain.wait(10) and not plain.wait_for_uploads(0.5)
        plain.stop()
        assert len(learner.state.committed) == 1
    finally:
        learner.stop()


def test_heartbeats_carry_the_health_figures_and_metrics_are_served(
    learner: FakeLearner, robot_config: ConfigFactory
) -> None:
    config = robot_config(
        learner.address, metrics=MetricsConfig(http_port=0, heartbeat_interval_s=0.1, log_interval_s=0.2)
    )
    first = RobotDaemon(
        config, robot=FakeRobot(), base_policy=FakePolicy(3), policy_loader=fake_policy_loader
    )
    # A second daemon in the same process: its own registry, no name collisions.
    second = RobotDaemon(replace(config, robot_id="robot-2"), robot=FakeRobot(), base_policy=FakePolicy(3))
    first.start(max_episodes=2)
    second.start(max_episodes=1)
    assert first.wait(10) and second.wait(10)
    assert learner.wait_for(lambda: any(h.metrics.get("steps", 0) >= 24 for h in learner.state.heartbeats))
    assert first.metrics_port is not None
    text = urllib.request.urlopen(f"http://127.0.0.1:{first.metrics_port}/metrics", timeout=5).read().decode()
    first.stop()
    second.stop()
    beat = next(
        h for h in learner.state.heartbeats if h.robot_id == "robot-1" and h.metrics.get("steps", 0) >= 24
    )
    assert beat.policy_version == 3
    assert {"loop_period_p99_ms", "inference_p99_ms", "deadline_misses", "uploads_ok"} <= set(beat.metrics)
    assert "sop_robot_policy_version 3.0" in text
    assert "sop_robot_steps_total 24.0" in text
    assert second.metrics.snapshot()["steps"] == 12
