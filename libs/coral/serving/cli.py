"""``coral-serve``: start a Ray cluster (here or on Slurm), deploy models on it, check them, stop it.

A thin layer: every verb calls one library function (``coral.serving.cluster``, ``.deploy``, ``.health``,
``.local``) that a notebook can call just as well. Run ``coral-serve <verb> --help`` for a verb's options.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from typing import Any

import yaml

from coral.serving.cluster import (
    ClusterError,
    ClusterState,
    LocalOptions,
    SlurmClusterOptions,
    start_cluster,
    stop_cluster,
)
from coral.serving.deploy import (
    DeployError,
    deploy_applications,
    load_applications,
    parse_applications,
    parse_literal,
    parse_names,
)
from coral.serving.endpoints import resolve
from coral.serving.health import check_health, format_status, status

EXAMPLES = """\
examples:
  coral-serve local --model SmolLM2-135M-Instruct --port 8000
  coral-serve start_cluster --local --add_workers 1
  coral-serve start_cluster --slurm "{'account': 'myacct', 'qos': 'normal'}" --add_workers 2
  coral-serve deploy_applications --yaml_config configs/serving/embedded_tiny.yaml
  coral-serve deploy_applications --action add \\
      --applications "[{'name': 'tiny', 'model': 'SmolLM2-135M-Instruct', 'min_replicas': 2}]"
  coral-serve check_health --app_name tiny
  coral-serve status
  coral-serve remove --app_name tiny
  coral-serve stop_cluster

Cluster state lives in <coral_dir>/<cluster_id>/ (default ~/.coral/<user>_cluster; $CORAL_DIR and
$CORAL_CLUSTER_ID override the defaults).
"""


def _mapping(flag: str) -> Callable[[str], dict[str, Any]]:
    """Parse a Python-literal, JSON or YAML mapping given on the command line."""

    def parse(text: str) -> dict[str, Any]:
        try:
            value = parse_literal(text)
        except yaml.YAMLError as exc:
            raise argparse.ArgumentTypeError(f"{flag}: not a mapping: {exc}") from None
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"{flag}: expected a mapping like \"{{'key': value}}\", got {text!r}")
        return value

    return parse


def _names(options: type) -> str:
    """The fields of a launcher's options, for its flag's help (``extra`` is where other names go)."""
    return ", ".join(f.name for f in dataclasses.fields(options) if f.name != "extra")


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("cluster")
    group.add_argument("--cluster_id", help="which cluster (default $CORAL_CLUSTER_ID, else <user>_cluster)")
    group.add_argument("--coral_dir", help="state folder root (default $CORAL_DIR, else ~/.coral)")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The ``coral-serve`` parser: one subcommand per verb, the cluster flags shared."""
    parser = argparse.ArgumentParser(
        prog="coral-serve", description="Start a Ray cluster (here or on Slurm), deploy models on it, check them, "
        "stop it; or serve one model locally without Ray.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="verb")
    common = _common()

    def verb(name: str, help_text: str) -> argparse.ArgumentParser:
        return verbs.add_parser(name, help=help_text, description=help_text, parents=[common])

    start = verb("start_cluster", "start a Ray cluster's head (unless one is running) and add worker nodes")
    where = start.add_mutually_exclusive_group()
    where.add_argument("--local", nargs="?", const={}, type=_mapping("--local"), metavar="'{...}'",
                       help=f"run on this machine; options: {_names(LocalOptions)}")
    where.add_argument("--slurm", type=_mapping("--slurm"), metavar="'{...}'",
                       help=f"run each node as a Slurm job; options: {_names(SlurmClusterOptions)}, or any other "
                            "submitit Slurm parameter (mem, time, gres, mail_user, ...; also as slurm_*)")
    start.add_argument("--add_workers", type=int, default=0, help="worker nodes to add (default 0)")
    start.add_argument("--cpus_per_worker", type=int, help="CPUs per worker (Slurm: cpus_per_task)")
    start.add_argument("--gpus", type=int, help="GPUs per worker (Slurm: gpus_per_node)")
    start.add_argument("--account", help="Slurm account (implies --slurm)")
    start.add_argument("--qos", help="Slurm QOS (implies --slurm)")
    start.add_argument("--partition", help="Slurm partition (implies --slurm)")
    start.add_argument("--time", type=int, metavar="MINUTES", help="Slurm time limit (default: the partition's)")
    start.add_argument("--mem_gb", type=float, help="Slurm memory per worker job")
    start.add_argument("--force_new_head", action="store_true", help="replace the recorded head even if it answers")
    start.add_argument("--timeout_s", type=float, default=600.0, help="how long to wait for nodes (default 600)")

    deploy = verb("deploy_applications", "deploy model applications (Ray Serve) and wait until they run")
    source = deploy.add_mutually_exclusive_group(required=True)
    source.add_argument("--applications", metavar="'[{...}]'",
                        help="a list of application specs (Python literal, JSON or YAML); fields: name, model, "
                             "engine (embedded|vllm), min_replicas, max_replicas, target_ongoing_requests, "
                             "max_ongoing_requests, tensor_parallel_size, use_grpc, num_cpus, engine_args, "
                             "served_name, token, accelerator_type; for --action remove, names are enough")
    source.add_argument("--yaml_config", metavar="FILE", help="a YAML file of applications (configs/serving/*.yaml)")
    deploy.add_argument("--action", choices=("replace", "add", "remove"), default="replace",
                        help="replace all applications (default), add/update these, or remove these")
    deploy.add_argument("--timeout_s", type=float, default=900.0, help="how long to wait for RUNNING (default 900)")

    remove = verb("remove", "remove one application")
    remove.add_argument("--app_name", required=True, help="the application to remove")
    remove.add_argument("--timeout_s", type=float, default=300.0, help="how long to wait (default 300)")

    health = verb("check_health", "send one test question to an application and show the answer")
    health.add_argument("--app_name", required=True, help="application name, http(s):// URL or grpc://host:port/app")
    health.add_argument("--prompt", default="What is 2+4=?", help="the question (default: What is 2+4=?)")
    health.add_argument("--max_tokens", type=int, default=32, help="most tokens in the answer (default 32)")
    health.add_argument("--timeout_s", type=float, default=120.0, help="request timeout (default 120)")

    status = verb("status", "show the head, nodes, resources, applications and Slurm jobs")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")

    verb("stop_cluster", "shut Serve down, stop this cluster's Ray processes / Slurm jobs, remove its state")

    local = verbs.add_parser("local", help="serve one model over HTTP on this machine, without Ray",
                             description="serve one model at http://<host>:<port>/v1 until interrupted")
    local.add_argument("--model", default="SmolLM2-135M-Instruct",
                       help="packaged model name or checkpoint folder (default SmolLM2-135M-Instruct)")
    local.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    local.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 = any free port)")
    token = local.add_mutually_exclusive_group()
    token.add_argument("--token_file", metavar="FILE",
                       help="file holding the bearer token clients must send (default: $CORAL_API_TOKEN; neither: "
                            "no authentication)")
    token.add_argument("--token", help="the bearer token itself; visible to every user of this machine in `ps`, "
                                       "so prefer --token_file or $CORAL_API_TOKEN")
    local.add_argument("--served_name", help="the model name clients send (default: --model)")
    local.add_argument("--engine", type=_mapping("--engine"), default={}, metavar="'{...}'",
                       help="embedded engine limits (EngineConfig fields, e.g. \"{'max_sequences': 64}\")")
    local.add_argument("--max_body_mb", type=float,
                       help="largest request body in MiB; a larger one is refused (413) unread (default 4)")
    return parser


def _location(args: argparse.Namespace, recorded: str | None = None) -> tuple[dict | None, dict | None]:
    """``--local``/``--slurm`` merged with the plain flags (Slurm flags imply Slurm).

    With neither, plain flags follow the launcher of the ``recorded`` head (local for a new cluster).
    """
    slurm_flags = {"account": args.account, "qos": args.qos, "partition": args.partition,
                   "timeout_min": args.time, "mem_gb": args.mem_gb}
    slurm_flags = {k: v for k, v in slurm_flags.items() if v is not None}
    if slurm_flags and args.local is not None:
        raise ClusterError(f"{sorted(slurm_flags)} are Slurm options; drop --local")
    on_slurm = args.slurm is not None or bool(slurm_flags) or (args.local is None and recorded == "slurm")
    sizes = {"cpus_per_task" if on_slurm else "cpus_per_worker": args.cpus_per_worker,
             "gpus_per_node" if on_slurm else "gpus_per_worker": args.gpus}
    sizes = {k: v for k, v in sizes.items() if v is not None}
    given = args.slurm if on_slurm else args.local
    if given is None and not slurm_flags and not sizes:
        return None, None
    options = {**(given or {}), **slurm_flags, **sizes}
    return (None, options) if on_slurm else (options, None)


def _start_cluster(args: argparse.Namespace) -> int:
    recorded = ClusterState.locate(args.cluster_id, args.coral_dir).read_head()
    local, slurm = _location(args, recorded.launcher if recorded else None)
    head = start_cluster(local=local, slurm=slurm, add_workers=args.add_workers, cluster_id=args.cluster_id,
                         coral_dir=args.coral_dir, force_new_head=args.force_new_head, timeout_s=args.timeout_s)
    print(f"cluster up ({head.launcher}): ray address {head.address}, dashboard {head.dashboard_url}, "
          f"serve http :{head.http_port}, grpc :{head.grpc_port}")
    print(f"ray CLI on this cluster: {head.ray_cli_env} ray status --address {head.address}")
    return 0


def _deploy(args: argparse.Namespace) -> int:
    if args.action == "remove":
        given: list[Any] = parse_names(args.applications) if args.applications else [
            app.name for app in load_applications(args.yaml_config)]
    else:
        given = parse_applications(args.applications) if args.applications else load_applications(args.yaml_config)
    statuses = deploy_applications(given, action=args.action, cluster_id=args.cluster_id,
                                   coral_dir=args.coral_dir, timeout_s=args.timeout_s)
    _print_endpoints(statuses, args)
    return 0


def _print_endpoints(statuses: dict[str, str], args: argparse.Namespace) -> None:
    if not statuses:
        print("no applications deployed")
    for name, app_status in statuses.items():
        endpoint = resolve(name, cluster_id=args.cluster_id, coral_dir=args.coral_dir)
        print(f"{name}: {app_status}  {endpoint.protocol} {endpoint.address}  model {endpoint.model!r}")


def _remove(args: argparse.Namespace) -> int:
    statuses = deploy_applications([args.app_name], action="remove", cluster_id=args.cluster_id,
                                   coral_dir=args.coral_dir, timeout_s=args.timeout_s)
    print(f"removed {args.app_name}; remaining: {', '.join(statuses) or 'none'}")
    return 0


def _check_health(args: argparse.Namespace) -> int:
    report = check_health(args.app_name, prompt=args.prompt, max_tokens=args.max_tokens, timeout_s=args.timeout_s,
                          cluster_id=args.cluster_id, coral_dir=args.coral_dir)
    print(json.dumps(dataclasses.asdict(report), indent=2))
    return 0 if report.ok else 1


def _status(args: argparse.Namespace) -> int:
    report = status(cluster_id=args.cluster_id, coral_dir=args.coral_dir)
    print(json.dumps(report, indent=2) if args.json else format_status(report))
    return 0


def _stop_cluster(args: argparse.Namespace) -> int:
    stopped = stop_cluster(cluster_id=args.cluster_id, coral_dir=args.coral_dir)
    print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return 0


def _local(args: argparse.Namespace) -> int:
    from coral.backends.embedded import EngineConfig
    from coral.serving.local import serve_local

    known = {f.name for f in dataclasses.fields(EngineConfig)}
    if set(args.engine) - known:
        raise ValueError(f"--engine: unknown field(s) {sorted(set(args.engine) - known)}; known: {sorted(known)}")
    limits = {} if args.max_body_mb is None else {"max_body_bytes": int(args.max_body_mb * 2**20)}
    serve_local(args.model, host=args.host, port=args.port, token=args.token, token_file=args.token_file,
                served_name=args.served_name, engine=EngineConfig(**args.engine), **limits)
    return 0


VERBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "start_cluster": _start_cluster,
    "deploy_applications": _deploy,
    "remove": _remove,
    "check_health": _check_health,
    "status": _status,
    "stop_cluster": _stop_cluster,
    "local": _local,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``coral-serve``; returns the exit status (errors print one clear line, exit 1)."""
    args = build_parser().parse_args(argv)
    try:
        return VERBS[args.verb](args)
    except (ClusterError, DeployError, LookupError, ValueError) as exc:
        print(f"coral-serve {args.verb}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
