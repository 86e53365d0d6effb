"""A Ray cluster for serving, on this machine or on Slurm, remembered in a small state folder.

State lives in ``<coral_dir>/<cluster_id>/`` (``coral_dir``: argument, else ``$CORAL_DIR``, else ``~/.coral``;
``cluster_id``: argument, else ``$CORAL_CLUSTER_ID``, else ``<user>_cluster``):

- ``head.json``: where the head is (host, GCS/dashboard/Serve ports) and how it was started;
- ``jobs.json``: every process (local PIDs) or Slurm job this cluster started, so stopping it touches
  nothing else on the machine;
- ``deployment.yaml``: the Ray Serve config of the deployed applications (``coral.serving.deploy``);
- ``logs/`` and ``submitit/``: the Ray processes' output and the Slurm jobs' logs.

Each Ray node is one ``ray start --block`` process: locally in its own session (so the node and every
process it spawns can be found and stopped by PID), on Slurm as the body of a submitit job (so ``scancel``
stops it). Ray Serve itself starts with the first deployment: its HTTP and gRPC options are part of the
deploy config (see ``coral.serving.deploy``), using the ports chosen here.

Modules: ``state`` (the folder, ``HeadInfo``), ``options`` (``LocalOptions``, ``SlurmJobOptions``,
``SlurmClusterOptions``), ``ray_processes`` (starting and stopping Ray nodes), ``local_launcher`` and
``slurm_launcher`` (one per launcher), ``control`` (``start_cluster``, ``stop_cluster``).
"""

from coral.serving.cluster.control import start_cluster, stop_cluster
from coral.serving.cluster.options import LocalOptions, SlurmClusterOptions, SlurmJobOptions
from coral.serving.cluster.ray_processes import alive_nodes, free_ports, session_processes
from coral.serving.cluster.slurm_launcher import job_states, slurm_parameters
from coral.serving.cluster.state import LOOPBACK, ClusterError, ClusterState, HeadInfo

__all__ = [
    "LOOPBACK",
    "ClusterError",
    "ClusterState",
    "HeadInfo",
    "LocalOptions",
    "SlurmClusterOptions",
    "SlurmJobOptions",
    "alive_nodes",
    "free_ports",
    "job_states",
    "session_processes",
    "slurm_parameters",
    "start_cluster",
    "stop_cluster",
]
