"""What each launcher takes, typed: ``LocalOptions`` (``--local``) and ``SlurmClusterOptions`` (``--slurm``).

``SlurmJobOptions`` are the resources of one Slurm job as submitit takes them; the cluster's Slurm nodes and the
iterative training driver's steps both use them. Options written as a mapping (the command line's
``--slurm '{partition: gpu}'``, a YAML file, the options a ``head.json`` recorded) go through ``from_dict``,
which names an unknown key and the closest known one before anything starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from coral.errors import ConfigError, did_you_mean

SlurmOptions = TypeVar("SlurmOptions", bound="SlurmJobOptions")

PROXY_LOCATIONS = ("HeadOnly", "EveryNode")
SUBMITIT_GENERIC = ("nodes", "tasks_per_node", "cpus_per_task", "gpus_per_node", "mem_gb", "timeout_min")
"""Options submitit's AutoExecutor takes under these names; every other Slurm option gains ``slurm_``."""
HEAD_DROPS = ("gpus_per_task", "gres", "cpus_per_gpu", "mem_per_gpu")
"""GPU options (besides ``gpus_per_node``) a head job with workers leaves out: it does no model work."""


def _unknown(option: str, key: str, known: list[str]) -> ConfigError:
    return ConfigError(option, f"unknown option{did_you_mean(key, known)}; known: {', '.join(known)}")


def _check(ok: bool, option: str, wanted: str, value: Any) -> None:
    if not ok:
        raise ConfigError(option, f"must be {wanted}, got {value!r}")


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _submitit_slurm_names() -> list[str]:
    """The Slurm parameters submitit accepts (``mem``, ``time``, ``gres``, ``mail_user``, ...)."""
    from submitit.slurm.slurm import SlurmExecutor

    return sorted(SlurmExecutor._valid_parameters())


@dataclass(frozen=True)
class LocalOptions:
    """How a cluster on this machine is laid out (``--local '{...}'``).

    Args:
        cpus_per_worker: CPUs each worker node offers Ray (replicas of the embedded engine take 1 each).
        gpus_per_worker: GPUs each worker node offers Ray.
        head_cpus: CPUs the head offers (None: 0 when workers are added, so replicas run on workers;
            otherwise every core).
        host: address clients use to reach the head; the dashboard binds it. 127.0.0.1 (the default) keeps every
            Ray server on loopback (``_LOOPBACK_RAY``) but two that Ray 2.60 binds to all interfaces whatever it is
            told: Serve's gRPC proxy and each replica's inter-deployment gRPC server.
        http_host: address the Serve HTTP proxy binds.
        proxy_location: ``HeadOnly``: one proxy; on one host every node would otherwise claim the same port.
    """

    cpus_per_worker: float = 1
    gpus_per_worker: float = 0
    head_cpus: float | None = None
    host: str = "127.0.0.1"
    http_host: str = "127.0.0.1"
    proxy_location: str = "HeadOnly"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LocalOptions:
        """Options from a mapping (``--local``, a ``head.json``); an unknown key is named with the closest one."""
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                raise _unknown(f"local.{key}", key, known)
        return cls(**values)


@dataclass(frozen=True)
class SlurmJobOptions:
    """The resources of one Slurm job (submitit's parameters). None leaves an option to Slurm or submitit.

    Args:
        partition: Slurm partition.
        account: Slurm account charged.
        qos: Slurm quality of service.
        nodes: nodes per job (>= 1).
        tasks_per_node: tasks per node (>= 1).
        cpus_per_task: CPUs per task (>= 1).
        gpus_per_node: GPUs per node (>= 0).
        mem_gb: memory per node in GB (> 0).
        timeout_min: time limit in minutes (>= 1); the cluster's jobs default to the partition's limit.
        constraint: Slurm node features required (``--constraint``).
        exclude: nodes to leave out (``--exclude``).
        extra: any other submitit Slurm parameter by its name without ``slurm_`` (``mem``, ``time``, ``gres``,
            ``mail_user``, ...); a mapping given to ``from_dict`` may list them beside the fields.
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int | None = None
    tasks_per_node: int | None = None
    cpus_per_task: int | None = None
    gpus_per_node: int | None = None
    mem_gb: float | None = None
    timeout_min: int | None = None
    constraint: str | None = None
    exclude: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Check every bound now, so a wrong option fails before a job is submitted."""
        for name, low in (("nodes", 1), ("tasks_per_node", 1), ("cpus_per_task", 1), ("gpus_per_node", 0),
                          ("timeout_min", 1)):
            value = getattr(self, name)
            _check(value is None or _is_int(value, low), f"slurm.{name}", f"an integer >= {low}", value)
        _check(self.mem_gb is None or _is_positive(self.mem_gb), "slurm.mem_gb", "a number > 0", self.mem_gb)
        for name in ("partition", "account", "qos", "constraint", "exclude"):
            value = getattr(self, name)
            _check(value is None or (isinstance(value, str) and value != ""), f"slurm.{name}", "a non-empty string",
                   value)
        if self.extra:
            allowed = self._extra_names()
            for key in self.extra:
                if key not in allowed:
                    raise _unknown(f"slurm.extra.{key}", key, allowed)

    @classmethod
    def _fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "extra"]

    @classmethod
    def _extra_names(cls) -> list[str]:
        fields_ = set(cls._fields())
        return [name for name in _submitit_slurm_names() if name not in fields_]

    @classmethod
    def from_dict(cls: type[SlurmOptions], values: Mapping[str, Any]) -> SlurmOptions:
        """Options from a mapping: field names, their ``slurm_`` spellings, ``extra``, or other submitit names.

        Raises ``ConfigError`` naming the first unknown key and the closest known one.
        """
        fields_ = cls._fields()
        chosen: dict[str, Any] = {}
        extra = dict(values.get("extra") or {})
        for key, value in values.items():
            bare = key.removeprefix("slurm_")
            if key in fields_ or bare in fields_:
                chosen[key if key in fields_ else bare] = value
            elif key != "extra":
                if bare not in cls._extra_names():
                    raise _unknown(f"slurm.{key}", key, [*fields_, *cls._extra_names()])
                extra[bare] = value
        return cls(**chosen, extra=extra)

    def submitit_parameters(self) -> dict[str, Any]:
        """What ``AutoExecutor.update_parameters`` takes: the options set, Slurm-only ones prefixed ``slurm_``."""
        params = {}
        for name in SlurmJobOptions._fields():
            value = getattr(self, name)
            if value is not None:
                params[name if name in SUBMITIT_GENERIC else f"slurm_{name}"] = value
        params.update({f"slurm_{key}": value for key, value in self.extra.items()})
        return params


@dataclass(frozen=True)
class SlurmClusterOptions(SlurmJobOptions):
    """A Ray cluster on Slurm (``--slurm '{...}'``): each node's job, plus how the head and proxies are laid out.

    Args:
        head_cpus_per_task: CPUs of the head's job when workers are added (it runs GCS, dashboard, Serve's
            controller; no model).
        head_mem_gb: memory of that head job in GB (None: as ``mem_gb``).
        use_array: submit the workers as one array job instead of one job each.
        proxy_location: Ray Serve proxy placement, ``EveryNode`` or ``HeadOnly``.
        http_host: address the Serve HTTP proxy binds (``0.0.0.0``: reachable from other nodes).
    """

    head_cpus_per_task: int = 2
    head_mem_gb: float | None = None
    use_array: bool = True
    proxy_location: str = "EveryNode"
    http_host: str = "0.0.0.0"

    def __post_init__(self) -> None:
        """Check the cluster's own options too."""
        super().__post_init__()
        _check(_is_int(self.head_cpus_per_task, 1), "slurm.head_cpus_per_task", "an integer >= 1",
               self.head_cpus_per_task)
        _check(self.head_mem_gb is None or _is_positive(self.head_mem_gb), "slurm.head_mem_gb", "a number > 0",
               self.head_mem_gb)
        _check(isinstance(self.use_array, bool), "slurm.use_array", "true or false", self.use_array)
        _check(self.proxy_location in PROXY_LOCATIONS, "slurm.proxy_location", f"one of {PROXY_LOCATIONS}",
               self.proxy_location)
        _check(isinstance(self.http_host, str) and self.http_host != "", "slurm.http_host", "an address",
               self.http_host)

    def head_job(self) -> SlurmJobOptions:
        """The head's job beside workers: no GPUs, ``head_cpus_per_task`` CPUs, ``head_mem_gb`` when given."""
        job = {name: getattr(self, name) for name in SlurmJobOptions._fields()}
        job.update(gpus_per_node=None, cpus_per_task=self.head_cpus_per_task,
                   mem_gb=self.mem_gb if self.head_mem_gb is None else self.head_mem_gb)
        return SlurmJobOptions(**job, extra={k: v for k, v in self.extra.items() if k not in HEAD_DROPS})
