"""A real one-node Slurm cluster on this machine runs the Ray head and a worker as jobs; the model is served on them.

The fixture installs Debian's slurm-wlm and munge when missing (root with apt-get only; otherwise the test is
skipped, saying why), writes a private munge key and slurm.conf under a temporary folder, starts munged,
slurmctld and slurmd, and stops them by PID afterwards, whatever happened. This machine has 2 cores: the head
job takes 1 CPU and offers Ray none; the worker job takes the other.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from coral.serving.cluster import (
    ClusterState,
    free_ports,
    job_states,
    start_cluster,
    stop_cluster,
)
from coral.serving.deploy import Application, deploy_applications
from coral.serving.health import check_health, status

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]


def _ensure_slurm_installed() -> None:
    if os.geteuid() != 0:
        pytest.skip("a private Slurm needs root (slurmd runs jobs as their users; munged runs as 'munge')")
    if shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("munged"):
        return
    if not shutil.which("apt-get"):
        pytest.skip("Slurm is not installed, and installing it needs apt-get (Debian's slurm-wlm, munge)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        result = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            pytest.skip(f"apt-get could not install {PACKAGES}: {result.stderr[-500:]}")


def _slurm_conf(root: Path, host: str, munge_socket: Path) -> str:
    ctld_port, slurmd_port = free_ports(2)
    return f"""\
ClusterName=coraltest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
KillWait=5
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _start_munged(root: Path) -> tuple[subprocess.Popen, Path]:
    """munged as the munge user with a fresh key, socket and state in ``root/munge`` (nothing system-wide)."""
    munge = pwd.getpwnam("munge")
    folder = root / "munge"
    folder.mkdir(mode=0o700)
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))  # a secret: not a modelling choice, so not seeded
    key.chmod(0o400)
    for path in (folder, key):
        os.chown(path, munge.pw_uid, munge.pw_gid)
    socket_path = folder / "munge.socket"
    command = ["munged", "--foreground", "--force", f"--socket={socket_path}", f"--key-file={key}",
               f"--pid-file={folder / 'munged.pid'}", f"--log-file={folder / 'munged.log'}",
               f"--seed-file={folder / 'munged.seed'}"]
    process = subprocess.Popen(command, user="munge", group="munge", stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not socket_path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"munged did not start; see {folder / 'munged.log'}")
        time.sleep(0.1)
    return process, socket_path


def _wait_idle(env: dict[str, str], root: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, check=False)
        if result.stdout.strip() == "idle":
            return
        time.sleep(0.5)
    logs = "\n".join(path.read_text()[-1500:] for path in (root / "slurmctld.log", root / "slurmd.log")
                     if path.exists())
    raise RuntimeError(f"the Slurm node did not become idle: {result.stdout!r} {result.stderr!r}\n{logs}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _cancel_everything(env: dict[str, str]) -> None:
    """Leave no job behind in this private Slurm before its daemons go (slurmd would orphan their steps)."""
    subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True, check=False)
    deadline = time.monotonic() + 60
    while subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True, check=False).stdout.strip():
        if time.monotonic() > deadline:
            break
        time.sleep(1)


@pytest.fixture(scope="module")
def slurm() -> Iterator[dict[str, str]]:
    """A private one-node Slurm; yields the environment that points its commands (and submitit) at it."""
    _ensure_slurm_installed()
    root = Path(tempfile.mkdtemp(prefix="coral-slurm-"))
    root.chmod(0o711)  # munged (another user) must reach its folder inside
    processes: list[subprocess.Popen] = []
    env = dict(os.environ)
    try:
        (root / "state").mkdir()
        (root / "spool").mkdir()
        munged, munge_socket = _start_munged(root)
        processes.append(munged)
        conf = root / "slurm.conf"
        conf.write_text(_slurm_conf(root, socket.gethostname().split(".")[0], munge_socket))
        env["SLURM_CONF"] = str(conf)
        for daemon in (["slurmctld", "-D", "-i", "-f", str(conf)], ["slurmd", "-D", "-f", str(conf)]):
            # their logs go to the files named in slurm.conf
            processes.append(subprocess.Popen(daemon, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        _wait_idle(env, root)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SLURM_CONF", str(conf))
            yield env
    finally:
        if "SLURM_CONF" in env and processes[1:]:
            _cancel_everything(env)
        for process in reversed(processes):
            _stop(process)
        shutil.rmtree(root, ignore_errors=True)


def _cluster_processes(gcs_port: int) -> list[psutil.Process]:
    """Processes of the Ray cluster whose GCS listens on ``gcs_port``: ray start, GCS, raylets, agents."""
    pattern = re.compile(rf"(gcs[-_]address[= ]\S*:{gcs_port}\b|gcs_server_port={gcs_port}\b|"
                         rf"--address \S*:{gcs_port}\b|--port {gcs_port}\b)")
    found = []
    for process in psutil.process_iter():
        try:
            if pattern.search(" ".join(process.cmdline())):
                found.append(process)
        except psutil.Error:
            continue
    return found


def test_ray_on_slurm_serves_and_stops(slurm, tmp_path):
    options = {"cpus_per_task": 1, "head_cpus_per_task": 1, "timeout_min": 30, "proxy_location": "HeadOnly"}
    state = ClusterState.locate("slurm_test", tmp_path)
    try:
        head = start_cluster(slurm=options, add_workers=1, cluster_id="slurm_test", coral_dir=tmp_path,
                             timeout_s=300)
        jobs = [job["job_id"] for job in state.read_jobs()]
        assert len(jobs) == 2 and head.slurm_job_id == jobs[0] and head.launcher == "slurm"
        assert job_states(jobs) == {jobs[0]: "RUNNING", jobs[1]: "RUNNING"}
        assert head.host != "127.0.0.1" and head.http_host == "0.0.0.0"  # reachable from other nodes

        app = Application(name="tiny", model="SmolLM2-135M-Instruct", engine_args={"max_sequences": 4})
        assert deploy_applications([app], cluster_id="slurm_test", coral_dir=tmp_path, timeout_s=400) == {
            "tiny": "RUNNING"}
        report = check_health("tiny", cluster_id="slurm_test", coral_dir=tmp_path, max_tokens=8)
        assert report.ok, report.error
        assert report.answer.strip() and report.replica

        summary = status(cluster_id="slurm_test", coral_dir=tmp_path)
        assert summary["slurm_jobs"] == {jobs[0]: "RUNNING", jobs[1]: "RUNNING"}
        assert summary["applications"]["tiny"]["status"] == "RUNNING"
        assert _cluster_processes(head.gcs_port)
    finally:
        stopped = stop_cluster(cluster_id="slurm_test", coral_dir=tmp_path)
    assert stopped == [f"slurm job {job_id}" for job_id in jobs]
    assert subprocess.run(["squeue", "-h"], env=slurm, capture_output=True, text=True, check=False).stdout.strip() == ""
    deadline = time.monotonic() + 30  # slurmstepd reaps the job's processes just after the job leaves the queue
    while _cluster_processes(head.gcs_port) and time.monotonic() < deadline:
        time.sleep(1)
    assert _cluster_processes(head.gcs_port) == []
    assert not state.head_file.exists() and not state.jobs_file.exists()
