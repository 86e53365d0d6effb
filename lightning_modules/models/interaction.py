"""The interaction module: runs coral conversations inside ``trainer.py validate`` and reports their metrics.

Lightning is the config, CLI, logging and multi-process launcher here; no tensors are trained. Each rank runs
its share of the (example, sample) keys not yet in the results store, appends records as conversations end,
and at the end rank 0 computes ``metrics.json`` from the store (never from memory) and prints a summary table.
On SIGTERM (how Slurm pre-empts a job) no new conversation starts, those in flight get a short grace period
(``RunSettings.stop_grace_s``) and are otherwise abandoned to the next run, the metrics of what is stored
are written as usual, and ``trainer.py`` then exits with status 143.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Literal

from lightning.pytorch import LightningModule

from coral.backends import ChatBackend, EmbeddedBackend, EngineConfig
from coral.backends.models import DEFAULT_MODEL
from coral.beliefs import BeliefExtractor
from coral.conversation import (
    PROTOCOLS,
    Agent,
    AgentConfig,
    AgentSpec,
    ConversationRunner,
    CoralProtocol,
    Protocol,
    RetryPolicy,
    RunSettings,
    build_agents,
)
from coral.conversation.progress import Progress, ProgressReporter
from coral.conversation.tree import strategy
from coral.errors import ConfigError, did_you_mean
from coral.metrics import summary_table, write_metrics
from coral.report import write_report
from coral.sampling import SamplingParams
from coral.store import ResultStore, read_records
from coral.tasks import Example, Task, stable_id
from lightning_modules.loggers import log_figures

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractorConfig:
    """How beliefs are extracted from turns.

    Args:
        mode: ``rules``, ``judge`` or ``rules_then_judge``.
        model: the judge model (None: the teacher's model).
        app_name: a served application for the judge (None: the embedded engine).
        temperature: the judge's temperature (greedy by default).
        max_tokens: the judge's reply budget; a belief is short.
    """

    mode: str = "rules_then_judge"
    model: str | None = None
    app_name: str | None = None
    temperature: float = 0.0
    max_tokens: int = 32


class InteractionModule(LightningModule):
    """Agents discuss each example under a protocol; their answers are extracted and graded turn by turn.

    Args:
        teacher_model: model of the agent that answers first (a packaged model name or a checkpoint dir).
        student_model: model of the agent that asks the question (turn 0).
        teacher_app_name: a served application for the teacher: a ``coral-serve`` application name, an
            OpenAI-compatible URL or a ``grpc://`` address (None: the embedded engine serves the model).
        student_app_name: likewise for the student.
        protocol: a registered protocol name (``coral``, ``debate``, ``generate_verify_refine``) with its default
            arguments, or ``class_path`` + ``init_args`` to set them (``--model.protocol.init_args.rounds 2``).
        agents: agent name -> what it does differently from the defaults (model, app_name, instruction or
            system_prompt, sampling); the protocol names the agents (Coral: ``teacher`` and ``student``; debate:
            ``agent_1`` ...; generate-verify-refine: ``generator``, ``verifier``, ``refiner``). An agent with no
            entry runs ``teacher_model`` (``student_model`` for ``student``) with the protocol's instruction.
        asker: who opens the conversation (turn 0); the other agent answers first. ``student``: the student asks
            for help with the problem ("I'm trying to solve ..."); ``teacher``: the teacher poses the problem for
            the student to solve ("I would like you to try and solve ..."), the reference's teacher-first variant.
            Coral only.
        max_turns: most generated turns per conversation (the CoT baseline uses 1). Coral only: the other protocols
            count their turns from their rounds and passes.
        sampling_temp: the agents' temperature.
        top_p: the agents' nucleus mass.
        sampling_n: independent conversations (trees, when ``beam_size > 1``) per example.
        beam_size: candidates generated at every turn; above 1 each conversation is sampled as a tree whose
            siblings are graded and stored (the Coral paper's tree sampling; 1 = plain conversations).
        expansion_strategy: which candidate continues the tree: ``random`` (paper), ``stratified``
            (correct/incorrect coin), ``diversity`` (distinct beliefs equally likely).
        single_request_expansion: ask for a turn's candidates in one request with ``n`` (one prefill, the
            reference's way) rather than one request per candidate.
        max_turn_tokens: most tokens per generated turn (None: 1024, the reference client's default).
        max_n_processes: most conversations in flight at once (per rank).
        request_timeout: seconds before a model request is abandoned (then retried).
        extractor: belief extraction settings.
        engine: limits of the embedded engine.
        retry: retries of failed model requests (a served application's connection errors and 5xx included).
        compat_metrics: compute metrics with the reference's definitions instead of the corrected ones.
        retry_errors: also redo the conversations of the results folder that ended in an error; each new record
            replaces the errored one (the default resumes only keys with no record at all).
        progress_every_s: seconds between progress lines when stderr is not a terminal (a Slurm job's log) and
            between those logged by ``coral.conversation.progress``; a terminal shows one line redrawn in place.
    """

    def __init__(
        self,
        teacher_model: str = DEFAULT_MODEL,
        student_model: str = DEFAULT_MODEL,
        teacher_app_name: str | None = None,
        student_app_name: str | None = None,
        protocol: str | Protocol = "coral",
        agents: dict[str, AgentConfig] | None = None,
        asker: Literal["student", "teacher"] = "student",
        max_turns: int = 20,
        sampling_temp: float = 0.2,
        top_p: float = 0.9,
        sampling_n: int = 1,
        beam_size: int = 1,
        expansion_strategy: str = "random",
        single_request_expansion: bool = True,
        max_turn_tokens: int | None = None,
        max_n_processes: int = 100,
        request_timeout: float = 600.0,
        extractor: ExtractorConfig = ExtractorConfig(),
        engine: EngineConfig = EngineConfig(),
        retry: RetryPolicy = RetryPolicy(),
        compat_metrics: bool = False,
        retry_errors: bool = False,
        progress_every_s: float = 30.0,
    ) -> None:
        super().__init__()
        counts = {"max_turns": max_turns, "sampling_n": sampling_n, "beam_size": beam_size,
                  "max_n_processes": max_n_processes}
        for option, value in counts.items():
            if value < 1:
                raise ConfigError(f"model.{option}", f"must be >= 1, got {value}")
        strategy(expansion_strategy)  # an unknown strategy fails at parse time
        self.save_hyperparameters()
        self.extractor_config = extractor
        self.engine_config = engine
        self.retry = retry
        self._served: dict[str, tuple[ChatBackend, str]] = {}  # app name -> one pooled client per application
        self.unfinished = 0  # conversations of this rank left unrun because of SIGTERM
        self.protocol = self._build_protocol(protocol)  # an unknown protocol or agent fails at parse time
        self.agent_configs()
        if beam_size > 1 and not isinstance(self.protocol, CoralProtocol):
            raise ConfigError("model.beam_size", f"tree sampling is for the coral protocol, not {self.protocol.name}")

    # ------------------------------------------------------------------ building blocks
    def _backend(self, model: str, endpoint: str | None) -> tuple[ChatBackend, str]:
        """The backend serving ``model`` and the model name to ask it for.

        No endpoint: the embedded engine in this process. Otherwise an application deployed with
        ``coral-serve`` (found in ``$CORAL_DIR/$CORAL_CLUSTER_ID``), an ``http(s)://.../v1`` URL or a
        ``grpc://host:port[/app]`` address; an application's served model name replaces ``model``.
        """
        if endpoint is None:
            return EmbeddedBackend(model, self.engine_config, self.hparams.request_timeout), model
        if endpoint not in self._served:
            from coral.serving.endpoints import backend_for

            backend = backend_for(endpoint, timeout_s=self.hparams.request_timeout, retry=self.retry)
            self._served[endpoint] = (backend, backend.model or model)  # the app's served name, if it has one
        return self._served[endpoint]

    def _build_protocol(self, protocol: str | Protocol) -> Protocol:
        """The configured protocol; Coral by name is opened by ``asker`` (the reference's teacher poses the
        problem, its student asks for help)."""
        if isinstance(protocol, Protocol):
            return protocol
        cls = PROTOCOLS.get(protocol)
        if cls is CoralProtocol:
            return CoralProtocol(asker=self.hparams.asker, posed=self.hparams.asker == "teacher")
        return cls()

    def agent_configs(self) -> dict[str, AgentConfig]:
        """Every agent the protocol runs, with its ``model.agents`` entry (an empty one when it has none)."""
        configured = {name: _agent_config(config) for name, config in (self.hparams.agents or {}).items()}
        speakers = self.protocol.speakers()
        for name in configured:
            if name not in speakers:
                raise ConfigError(f"model.agents.{name}", f"the {self.protocol.name} protocol runs no agent named "
                                  f"{name!r}{did_you_mean(name, speakers)}; its agents: {', '.join(speakers)}")
        return {name: configured.get(name, AgentConfig()) for name in speakers}

    def agent_specs(self) -> dict[str, AgentSpec]:
        """Every agent's model and endpoint: its own, else the reference's ``student_*`` options for the agent
        named ``student`` and ``teacher_*`` for every other."""
        hp = self.hparams
        specs = {}
        for name, config in self.agent_configs().items():
            model, endpoint = ((hp.student_model, hp.student_app_name) if name == "student"
                               else (hp.teacher_model, hp.teacher_app_name))
            specs[name] = AgentSpec(config.model or model, config.app_name or endpoint)
        return specs

    def _agents(self, task: Task, instructions: dict[str, str]) -> dict[str, Agent]:
        """The protocol's agents (``coral.conversation.build_agents``), on the embedded engine or served apps."""
        hp = self.hparams
        sampling = SamplingParams(hp.sampling_temp, hp.top_p, hp.max_turn_tokens or 1024)
        return build_agents(self.protocol, task, self.agent_specs(), self.agent_configs(), sampling,
                            lambda spec: self._backend(spec.model, spec.endpoint), instructions)

    def _extractor(self) -> BeliefExtractor:
        cfg = self.extractor_config
        backend, model = None, cfg.model or self.hparams.teacher_model
        if cfg.mode != "rules":
            backend, model = self._backend(model, cfg.app_name)
        sampling = SamplingParams(temperature=cfg.temperature, top_p=1.0, max_tokens=cfg.max_tokens)
        return BeliefExtractor(cfg.mode, backend, model, sampling)

    @property
    def results_dir(self) -> Path:
        return Path(self.trainer.default_root_dir)

    @property
    def run_seed(self) -> int:
        """The seed ``seed_everything`` set (LightningCLI's ``seed_everything``); every request seed derives from it."""
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def run_settings(self, config_hash: str) -> RunSettings:
        """The options that shape how conversations run, under the library's names; built once per run."""
        hp = self.hparams
        return RunSettings(
            run_seed=self.run_seed,
            config_hash=config_hash,
            max_turns=hp.max_turns,
            concurrency=hp.max_n_processes,
            retry=self.retry,
            beam_size=hp.beam_size,
            expansion=hp.expansion_strategy,
            single_request_expansion=hp.single_request_expansion,
        )

    def config_hash(self) -> str:
        """Identifies what shapes the records; concurrency, timeouts and engine limits do not."""
        hp = dict(self.hparams)
        for key in ("max_n_processes", "request_timeout", "engine", "retry", "compat_metrics", "retry_errors",
                    "progress_every_s"):
            hp.pop(key, None)
        for key, default in _ADDED_LATER.items():
            if hp.get(key) == default:
                hp.pop(key)
        hp["extractor"] = asdict(self.extractor_config)
        if isinstance(hp["protocol"], Protocol):
            cls = type(hp["protocol"])
            hp["protocol"] = {"class_path": f"{cls.__module__}.{cls.__qualname__}",
                              "init_args": hp["protocol"].arguments()}
        if hp.get("agents"):
            hp["agents"] = {name: asdict(_agent_config(config)) for name, config in sorted(hp["agents"].items())}
        data = self.trainer.datamodule
        shaped = {"model": hp, "task": data.task_name, "task_args": data.task_args, "val_set": asdict(data.val_set)}
        return stable_id(json.loads(json.dumps(shaped, default=str)), self.run_seed)

    # ------------------------------------------------------------------ the validate loop
    def transfer_batch_to_device(self, batch: list[Example], device, dataloader_idx: int) -> list[Example]:
        return batch  # examples are text; nothing goes to a device

    def validation_step(self, batch: list[Example], batch_idx: int) -> None:
        data = self.trainer.datamodule
        store = ResultStore(self.results_dir, rank=self.global_rank, retry_errors=self.hparams.retry_errors)
        config_hash = self.config_hash()
        _refuse_foreign_records(self.results_dir, config_hash)
        runner = ConversationRunner(
            protocol=self.protocol,
            task=data.task,
            agents=self._agents(data.task, data.instructions()),
            extractor=self._extractor(),
            store=store,
            settings=self.run_settings(config_hash),
        )
        shard = batch[self.global_rank :: self.trainer.world_size]
        work = runner.pending(shard, self.hparams.sampling_n)
        done = len(shard) * self.hparams.sampling_n - len(work)
        if not work:
            errored = len(store.errored & {(ex.id, s) for ex in shard for s in range(self.hparams.sampling_n)})
            redo = f" ({errored} ended in an error; --model.retry_errors true redoes them)" if errored else ""
            print(f"nothing to run: all {done} conversations are already stored in {self.results_dir}{redo}")
            return
        progress = Progress(total=len(work) + done, done=done)
        with ProgressReporter(progress, self.hparams.progress_every_s, silent=self.global_rank != 0) as reporter:
            asyncio.run(self._run(runner, work, on_done=reporter.update))
        if self.trainer.received_sigterm:
            self.unfinished += len(runner.pending(shard, self.hparams.sampling_n))

    async def _run(self, runner: ConversationRunner, work: list, on_done) -> None:
        """Run the conversations until done or SIGTERM, then close the served backends' connections while their
        event loop lives."""
        stop = asyncio.Event()
        if self.trainer.received_sigterm:  # it came while the run was being set up
            stop.set()
        try:
            with _stop_on_sigterm(stop):
                await runner.run(work, on_done=on_done, stop=stop)
        finally:
            for backend, _ in self._served.values():
                await backend.aclose()

    def on_validation_epoch_end(self) -> None:
        self.trainer.strategy.barrier()
        if self.global_rank == 0:
            metrics = write_metrics(self.results_dir, compat=self.hparams.compat_metrics)
            one_answer = isinstance(self.protocol, CoralProtocol) and self.hparams.max_turns == 1
            table = summary_table(metrics, conversation=not one_answer)
            print(f"\ncoral results in {self.results_dir}\n{table}\n", flush=True)
            self._write_report()
        if self.trainer.received_sigterm:
            print(
                f"stopped by SIGTERM: {self.unfinished} conversations were not run (rank {self.global_rank}); the "
                "metrics above cover those stored. Run the same command again to finish them.",
                file=sys.stderr,
                flush=True,
            )
        self.trainer.strategy.barrier()
        metrics = json.loads((self.results_dir / "metrics.json").read_text())
        self.log_dict({k: float(v) for k, v in metrics.items()}, rank_zero_only=True)

    def _write_report(self) -> None:
        """report.html + figures/, from the store like metrics.json. The records and metrics are already safe, so
        a report that cannot be written (a full disk) is a warning: ``coral-report`` writes it later."""
        try:
            report = write_report([self.results_dir])
        except OSError as exc:
            print(f"report not written ({exc}); make it later with: coral-report {self.results_dir}", file=sys.stderr)
            return
        log_figures(self.loggers, report.figures)
        print(f"report: {report.html}", flush=True)

    def on_validation_end(self) -> None:
        self.trainer.datamodule.task.close()


def _agent_config(value: AgentConfig | dict) -> AgentConfig:
    """An agent's entry: LightningCLI keeps ``--model.agents '{...}'`` values in hparams as the plain dicts given."""
    return value if isinstance(value, AgentConfig) else AgentConfig(**value)


_ADDED_LATER = {"asker": "student", "agents": None}
"""Options added after results folders existed: hashed only when set away from their default, so a folder
written before an option existed keeps its config hash and can be resumed."""


@contextmanager
def _stop_on_sigterm(stop: asyncio.Event) -> Iterator[None]:
    """Set ``stop`` on SIGTERM (how Slurm pre-empts a job) while conversations run, from the running event loop.

    The handler that was there (Lightning's, which logs and sets ``trainer.received_sigterm``) still runs.
    Signal handlers can only be set from the main thread; elsewhere SIGTERM keeps its usual effect.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(stop.set)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _refuse_foreign_records(root: Path, config_hash: str) -> None:
    """A results folder holds one configuration; resuming into another's folder would mix their records."""
    foreign = {r.config_hash for r in read_records(root)} - {config_hash}
    if foreign:
        raise ValueError(
            f"{root} holds conversations from another configuration (config hash {sorted(foreign)[0]}, this run "
            f"{config_hash}); choose another --trainer.default_root_dir (or EXP_NAME) or remove that folder"
        )
