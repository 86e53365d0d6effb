"""Model applications on a Ray cluster: what to serve, rendered as ONE Ray Serve config file, applied and awaited.

An :class:`Application` says what to serve (model, engine, replicas, concurrency). Every application of a
cluster is rendered into a single Ray Serve deploy config (the format of ``serve deploy``), which also carries
the proxies' HTTP and gRPC options, so the ports recorded in ``head.json`` and the running proxies can never
disagree. The config is applied the way ``serve deploy`` does it, with a PUT to the Ray dashboard's REST API,
and the call waits until every application is RUNNING.

Two engines:

- ``embedded``: coral's in-process engine (it loads the model on the CPU only),
  ``coral.serving.apps:build_embedded_app``; serves the OpenAI chat route and coral's gRPC service.
- ``vllm``: Ray Serve LLM's OpenAI app, ``ray.serve.llm:build_openai_app``, with prefix caching on and the
  prefix-cache-affinity request router. That module is only named here, never imported: it needs vLLM and GPUs.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import time
import urllib.error
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from coral.errors import did_you_mean
from coral.serving.cluster import ClusterState, HeadInfo

EMBEDDED_IMPORT_PATH = "coral.serving.apps:build_embedded_app"
VLLM_IMPORT_PATH = "ray.serve.llm:build_openai_app"
GRPC_SERVICER = "coral.wire.coral_chat_pb2_grpc.add_CoralChatServicer_to_server"
PREFIX_ROUTER = "ray.serve.llm.request_router:PrefixCacheAffinityRouter"
"""Ray Serve LLM's prefix-aware router (defined in ``ray/serve/llm/request_router.py`` in Ray 2.60)."""

ENGINES = ("embedded", "vllm")
DEFAULT_MAX_ONGOING = {"embedded": 64, "vllm": 150}
"""Per-replica concurrency caps: 64 is what the embedded engine batches well; 150 is Matrix's value for 8B."""

ALIASES = {"model_name": "model", "min_replica": "min_replicas", "max_replica": "max_replicas", "app_name": "name"}
"""Matrix's spellings, accepted so its ``--applications`` strings work unchanged."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class DeployError(ValueError):
    """A bad application spec, or a deployment Ray refused or that did not come up in time."""


@dataclass
class Application:
    """One served model: a Ray Serve application reachable at ``/<name>`` (HTTP) or by name (gRPC).

    Args:
        name: application name; the HTTP route is ``/<name>/v1`` and gRPC clients send it as metadata.
        model: a packaged model name (``SmolLM2-135M-Instruct``), a local checkpoint folder, or a Hub id (vLLM).
        engine: ``embedded`` (coral's engine) or ``vllm`` (Ray Serve LLM; GPUs).
        min_replicas: fewest replicas the autoscaler keeps.
        max_replicas: most replicas (None: ``min_replicas``, a fixed size).
        target_ongoing_requests: requests in flight per replica the autoscaler aims at
            (None: ``max(int(0.8 * max_ongoing_requests), 1)``, as Matrix does).
        max_ongoing_requests: most requests one replica accepts at once (None: 64 embedded, 150 vLLM).
        tensor_parallel_size: GPUs per vLLM replica.
        use_grpc: clients resolving this application by name talk gRPC instead of HTTP (embedded only).
        num_cpus: CPUs reserved per replica (embedded, default 1) or per GPU worker (vLLM, default Ray's).
        engine_args: embedded: ``EngineConfig`` fields; vLLM: extra vLLM engine arguments.
        served_name: the model name clients send (None: ``model``).
        token: bearer token the application requires (embedded only; None: open).
        accelerator_type: GPU type for vLLM replicas, e.g. ``H100`` (None: any GPU).
    """

    name: str
    model: str
    engine: str = "embedded"
    min_replicas: int = 1
    max_replicas: int | None = None
    target_ongoing_requests: int | None = None
    max_ongoing_requests: int | None = None
    tensor_parallel_size: int = 1
    use_grpc: bool = False
    num_cpus: float | None = None
    engine_args: dict[str, Any] = field(default_factory=dict)
    served_name: str | None = None
    token: str | None = None
    accelerator_type: str | None = None

    def __post_init__(self) -> None:
        for problem in self._problems():
            raise DeployError(problem)
        if self.max_replicas is None:
            self.max_replicas = max(self.min_replicas, 1)
        if self.max_ongoing_requests is None:
            self.max_ongoing_requests = DEFAULT_MAX_ONGOING[self.engine]
        if self.target_ongoing_requests is None:
            self.target_ongoing_requests = max(int(0.8 * self.max_ongoing_requests), 1)
        if self.served_name is None:
            self.served_name = self.model

    def _problems(self) -> list[str]:
        """What is wrong with the spec, naming the field (the first broken rule, then engine-specific rules)."""
        checks = [
            (lambda: isinstance(self.name, str) and bool(_NAME.match(self.name)),
             f"name must be letters, digits, '_', '-' or '.', got {self.name!r}"),
            (lambda: isinstance(self.model, str) and bool(self.model),
             f"model must be a non-empty string, got {self.model!r}"),
            (lambda: self.engine in ENGINES, f"engine must be one of {ENGINES}, got {self.engine!r}"),
            (lambda: _is_int(self.min_replicas) and self.min_replicas >= 0,
             f"min_replicas must be an integer >= 0, got {self.min_replicas!r}"),
            (lambda: self.max_replicas is None
             or (_is_int(self.max_replicas) and self.max_replicas >= max(self.min_replicas, 1)),
             f"max_replicas must be an integer >= max(min_replicas, 1), got {self.max_replicas!r}"),
            (lambda: self.max_ongoing_requests is None
             or (_is_int(self.max_ongoing_requests) and self.max_ongoing_requests >= 1),
             f"max_ongoing_requests must be an integer >= 1, got {self.max_ongoing_requests!r}"),
            (lambda: self.target_ongoing_requests is None
             or (_is_number(self.target_ongoing_requests) and self.target_ongoing_requests > 0),
             f"target_ongoing_requests must be a number > 0, got {self.target_ongoing_requests!r}"),
            (lambda: _is_int(self.tensor_parallel_size) and self.tensor_parallel_size >= 1,
             f"tensor_parallel_size must be an integer >= 1, got {self.tensor_parallel_size!r}"),
            (lambda: isinstance(self.use_grpc, bool), f"use_grpc must be true or false, got {self.use_grpc!r}"),
            (lambda: self.num_cpus is None or (_is_number(self.num_cpus) and self.num_cpus >= 0),
             f"num_cpus must be a number >= 0, got {self.num_cpus!r}"),
            (lambda: isinstance(self.engine_args, dict), f"engine_args must be a mapping, got {self.engine_args!r}"),
            (lambda: all(isinstance(v, str | None) for v in (self.served_name, self.token, self.accelerator_type)),
             "served_name, token and accelerator_type must be strings"),
        ]
        problems = next(([message] for ok, message in checks if not ok()), [])
        if not problems and self.engine == "vllm":
            problems += self._vllm_problems()
        if not problems and self.engine == "embedded":
            problems += self._embedded_problems()
        return problems

    def _vllm_problems(self) -> list[str]:
        problems = []
        if self.use_grpc:
            problems.append("use_grpc is only available with engine 'embedded' (Ray Serve LLM serves HTTP only)")
        if self.token is not None:
            problems.append("token is only available with engine 'embedded'")
        if "tensor_parallel_size" in self.engine_args:
            problems.append("engine_args.tensor_parallel_size: use the tensor_parallel_size field instead")
        return problems

    def _embedded_problems(self) -> list[str]:
        problems = []
        if self.tensor_parallel_size != 1:
            problems.append("tensor_parallel_size applies to engine 'vllm' only")
        if self.accelerator_type is not None:
            problems.append("accelerator_type applies to engine 'vllm' only")
        if self.engine_args:
            from coral.backends.embedded import EngineConfig

            known = [f.name for f in dataclasses.fields(EngineConfig)]
            problems += [f"engine_args.{key}: {_unknown(key, known)}" for key in self.engine_args if key not in known]
        return problems

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (what ``deployment.yaml`` keeps), defaults resolved."""
        return dataclasses.asdict(self)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _unknown(key: str, known: list[str]) -> str:
    return f"unknown field{did_you_mean(key, known)}; known fields: {', '.join(known)}"


# --------------------------------------------------------------------------------------------- parsing specs


def application_from_dict(spec: Any, where: str) -> Application:
    """Build one Application from a mapping, naming ``where`` (file, line, list index) in every error."""
    if not isinstance(spec, dict):
        raise DeployError(f"{where}: an application must be a mapping, got {spec!r}")
    known = [f.name for f in dataclasses.fields(Application)]
    values: dict[str, Any] = {}
    for key, value in spec.items():
        name = ALIASES.get(key, key)
        if name not in known:
            raise DeployError(f"{where}: field {key!r}: {_unknown(str(key), known)}")
        values[name] = value
    for required in ("name", "model"):
        if required not in values:
            raise DeployError(f"{where}: field {required!r} is required")
    try:
        return Application(**values)
    except DeployError as exc:
        raise DeployError(f"{where} (application {values['name']!r}): {exc}") from None


def parse_applications(text: str, source: str = "--applications") -> list[Application]:
    """Applications from a Python-literal, JSON or YAML string (Matrix's ``--applications "[{...}]"``)."""
    return [application_from_dict(spec, f"{source}[{i}]") for i, spec in enumerate(_literal_list(text, source))]


def parse_names(text: str, source: str = "--applications") -> list[str]:
    """Application names for ``remove``: plain names or specs carrying a ``name``."""
    names = []
    for i, item in enumerate(_literal_list(text, source)):
        name = item.get("name", item.get("app_name")) if isinstance(item, dict) else item
        if not isinstance(name, str) or not name:
            raise DeployError(f"{source}[{i}]: expected an application name, got {item!r}")
        names.append(name)
    return names


def parse_literal(text: str) -> Any:
    """A value given on a command line: a Python literal, else JSON/YAML (raises ``yaml.YAMLError``)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return yaml.safe_load(text)


def _literal_list(text: str, source: str) -> list[Any]:
    """Parse a string with ``parse_literal``; a single mapping becomes a one-item list."""
    try:
        value = parse_literal(text)
    except yaml.YAMLError as exc:
        raise DeployError(f"{source}: not a Python literal, JSON or YAML list: {exc}") from None
    if isinstance(value, (dict, str)):
        value = [value]
    if not isinstance(value, list):
        raise DeployError(f"{source}: expected a list of applications, got {type(value).__name__}")
    return value


def load_applications(path: str | Path) -> list[Application]:
    """Applications from a YAML file: a list, or a mapping with an ``applications`` list.

    Errors name the file, the line where the application starts, and the field.
    """
    path = Path(path)
    try:
        text = path.read_text()
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except (OSError, yaml.YAMLError) as exc:
        raise DeployError(f"{path}: cannot read applications: {exc}") from None
    items, nodes = data, root
    if isinstance(data, dict):
        extra = sorted(set(data) - {"applications"})
        if extra:
            raise DeployError(f"{path}: unknown top-level field(s) {extra}; expected 'applications'")
        items = data.get("applications")
        nodes = next((v for k, v in root.value if k.value == "applications"), None)
    if not isinstance(items, list):
        raise DeployError(f"{path}: expected a list of applications (or 'applications: [...]')")
    lines = [node.start_mark.line + 1 for node in nodes.value]
    return [application_from_dict(spec, f"{path}:{line}: applications[{i}]")
            for i, (spec, line) in enumerate(zip(items, lines))]


# ------------------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class ProxyOptions:
    """Where Ray Serve's proxies listen; fixed when Serve first starts on a cluster.

    Args:
        http_port: HTTP proxy port.
        grpc_port: gRPC proxy port.
        http_host: address the HTTP proxy binds (127.0.0.1 on one machine, 0.0.0.0 on a cluster).
        proxy_location: ``HeadOnly`` or ``EveryNode`` (one proxy per node; needs one node per host).
        request_timeout_s: end-to-end limit of one request through a proxy.
    """

    http_port: int
    grpc_port: int
    http_host: str = "127.0.0.1"
    proxy_location: str = "HeadOnly"
    request_timeout_s: float = 3600.0


def render_serve_config(apps: list[Application], proxy: ProxyOptions) -> dict[str, Any]:
    """One Ray Serve deploy config for every application of a cluster (``serve deploy`` accepts it as is)."""
    names = [app.name for app in apps]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DeployError(f"application names must be unique, repeated: {duplicates}")
    return {
        "proxy_location": proxy.proxy_location,
        "http_options": {"host": proxy.http_host, "port": proxy.http_port,
                         "request_timeout_s": proxy.request_timeout_s},
        "grpc_options": {"port": proxy.grpc_port, "grpc_servicer_functions": [GRPC_SERVICER]},
        "applications": [_render_app(app) for app in apps],
    }


def _render_app(app: Application) -> dict[str, Any]:
    if app.engine == "embedded":
        import_path, args = EMBEDDED_IMPORT_PATH, _embedded_args(app)
    else:
        import_path, args = VLLM_IMPORT_PATH, {"llm_configs": [vllm_llm_config(app)]}
    return {"name": app.name, "route_prefix": f"/{app.name}", "import_path": import_path, "args": args}


def _embedded_args(app: Application) -> dict[str, Any]:
    return {
        "model": app.model,
        "served_name": app.served_name,
        "engine": dict(app.engine_args),
        "token": app.token,
        "min_replicas": app.min_replicas,
        "max_replicas": app.max_replicas,
        "target_ongoing_requests": app.target_ongoing_requests,
        "max_ongoing_requests": app.max_ongoing_requests,
        "num_cpus": 1 if app.num_cpus is None else app.num_cpus,
    }


def vllm_llm_config(app: Application) -> dict[str, Any]:
    """Ray Serve LLM's ``LLMConfig`` for a vLLM application, as plain data.

    Prefix caching is forced on and requests are routed by prefix affinity, because a conversation's next turn
    repeats its whole history: landing on the replica that cached it saves recomputing that prefix.
    """
    config: dict[str, Any] = {
        "model_loading_config": {"model_id": app.served_name, "model_source": app.model},
        "engine_kwargs": {"tensor_parallel_size": app.tensor_parallel_size, "enable_prefix_caching": True,
                          **app.engine_args},
        "deployment_config": {
            "autoscaling_config": {"min_replicas": app.min_replicas, "max_replicas": app.max_replicas,
                                   "target_ongoing_requests": app.target_ongoing_requests},
            "max_ongoing_requests": app.max_ongoing_requests,
            "request_router_config": {"request_router_class": PREFIX_ROUTER},
        },
    }
    if app.accelerator_type is not None:
        config["accelerator_type"] = app.accelerator_type
    if app.num_cpus is not None:  # one bundle per GPU worker; one node unless pipeline stages span nodes
        one_node = app.engine_args.get("pipeline_parallel_size", 1) == 1
        config["placement_group_config"] = {"bundle_per_worker": {"CPU": app.num_cpus, "GPU": 1},
                                            "strategy": "STRICT_PACK" if one_node else "PACK"}
    return config


def merge(current: list[Application], given: Sequence[Application | str], action: str) -> list[Application]:
    """The applications after ``action``: replace (given only), add (given win on equal names), remove (by name)."""
    if action == "remove":
        names = [item if isinstance(item, str) else item.name for item in given]
        missing = sorted(set(names) - {app.name for app in current})
        if missing:
            known = ", ".join(app.name for app in current) or "none"
            raise DeployError(f"cannot remove unknown application(s) {missing}; deployed: {known}")
        return [app for app in current if app.name not in names]
    if action not in ("replace", "add"):
        raise DeployError(f"action must be replace, add or remove, got {action!r}")
    apps = [item for item in given if isinstance(item, Application)]
    if len(apps) != len(given):
        raise DeployError(f"action {action!r} needs application specs, not bare names")
    if action == "replace":
        return apps
    new = {app.name for app in apps}
    return [app for app in current if app.name not in new] + apps


# -------------------------------------------------------------------------------------------- deployment.yaml


def save_deployment(path: Path, apps: list[Application], serve_config: dict[str, Any]) -> None:
    """Persist the Serve config (``serve deploy``-able) with coral's specs beside it (Serve ignores extra keys)."""
    document = {**serve_config, "coral_applications": [app.to_dict() for app in apps]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(document, sort_keys=False))
    tmp.replace(path)


def load_deployment(path: Path) -> list[Application]:
    """The applications recorded in ``deployment.yaml`` (none when the file is missing)."""
    if not path.exists():
        return []
    data = yaml.safe_load(path.read_text()) or {}
    return [application_from_dict(spec, f"{path}: coral_applications[{i}]")
            for i, spec in enumerate(data.get("coral_applications", []))]


# ----------------------------------------------------------------------------------- applying through Ray


def apply_serve_config(head: HeadInfo, serve_config: dict[str, Any], timeout_s: float = 60.0) -> None:
    """PUT the config to the dashboard's Serve REST API, as ``serve deploy`` does."""
    try:
        head.dashboard("/api/serve/applications/", method="PUT", body=serve_config, timeout_s=timeout_s)
    except urllib.error.HTTPError as exc:
        raise DeployError(f"Ray refused the Serve config ({exc.code}): {exc.read().decode(errors='replace')}") from None
    except OSError as exc:
        raise DeployError(f"cannot reach the Ray dashboard at {head.dashboard_url}: {exc}") from None


def serve_details(head: HeadInfo, timeout_s: float = 10.0) -> dict[str, Any]:
    """Ray Serve's view of the cluster: applications with status, message and deployments; proxies."""
    return head.dashboard("/api/serve/applications/", timeout_s=timeout_s) or {}


def wait_until_running(head: HeadInfo, names: list[str], timeout_s: float = 600.0,
                       poll_s: float = 1.0) -> dict[str, str]:
    """Block until every named application is RUNNING and no other remains; fail fast on DEPLOY_FAILED.

    Returns name -> status.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            apps = serve_details(head).get("applications") or {}
        except (OSError, ValueError):
            apps = {}  # the dashboard can be briefly busy while Serve starts
        statuses = {name: info.get("status", "?") for name, info in apps.items()}
        for name in names:
            if statuses.get(name) == "DEPLOY_FAILED":
                raise DeployError(f"application {name!r} failed to deploy: {apps[name].get('message', '')}")
        leftover = sorted(set(statuses) - set(names))
        if all(statuses.get(name) == "RUNNING" for name in names) and not leftover:
            return statuses
        if time.monotonic() > deadline:
            pending = [f"{n}: {statuses.get(n, 'NOT_STARTED')} {apps.get(n, {}).get('message', '')}".strip()
                       for n in names if statuses.get(n) != "RUNNING"]
            pending += [f"{n}: still {statuses[n]} (being removed)" for n in leftover]
            raise DeployError(f"applications not ready after {timeout_s:.0f}s: {'; '.join(pending)}")
        time.sleep(poll_s)


# ------------------------------------------------------------------------------------------------ the verb


def deploy_applications(applications: Sequence[Application | str], *, action: str = "replace",
                        cluster_id: str | None = None, coral_dir: str | Path | None = None,
                        timeout_s: float = 600.0) -> dict[str, str]:
    """Change a cluster's applications (``replace``, ``add``, or ``remove`` by name) and wait until RUNNING.

    The resulting list is rendered into one Serve config, applied through the dashboard, and saved as
    ``deployment.yaml``. Returns application name -> status.
    """
    state = ClusterState.locate(cluster_id, coral_dir)
    with state.lock():
        head = state.require_head()
        apps = merge(load_deployment(state.deployment_file), applications, action)
        proxy = ProxyOptions(http_port=head.http_port, grpc_port=head.grpc_port, http_host=head.http_host,
                             proxy_location=head.proxy_location)
        serve_config = render_serve_config(apps, proxy)
        apply_serve_config(head, serve_config)
        save_deployment(state.deployment_file, apps, serve_config)
    return wait_until_running(head, [app.name for app in apps], timeout_s)
