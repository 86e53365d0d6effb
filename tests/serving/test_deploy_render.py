"""Application specs -> one Ray Serve config: rendering, validation errors, actions, endpoints, CLI parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from coral.errors import ConfigError
from coral.serving import cli
from coral.serving.cluster import (
    ClusterError,
    ClusterState,
    HeadInfo,
    SlurmClusterOptions,
    slurm_parameters,
)
from coral.serving.cluster.slurm_launcher import _slurm_minutes
from coral.serving.deploy import (
    EMBEDDED_IMPORT_PATH,
    GRPC_SERVICER,
    PREFIX_ROUTER,
    VLLM_IMPORT_PATH,
    Application,
    DeployError,
    ProxyOptions,
    load_applications,
    load_deployment,
    merge,
    parse_applications,
    parse_names,
    render_serve_config,
    save_deployment,
)
from coral.serving.endpoints import UnknownEndpoint, backend_for, resolve

ROOT = Path(__file__).resolve().parents[2]
PROXY = ProxyOptions(http_port=18000, grpc_port=19000)
EMBEDDED_ARGS = {"model", "served_name", "engine", "token", "min_replicas", "max_replicas",
                 "target_ongoing_requests", "max_ongoing_requests", "num_cpus"}


def test_embedded_app_renders_one_valid_serve_config():
    app = Application(name="tiny", model="SmolLM2-135M-Instruct", min_replicas=2, engine_args={"max_sequences": 8})
    config = render_serve_config([app], PROXY)
    ServeDeploySchema.model_validate(config)  # what the dashboard's PUT accepts
    assert config["http_options"] == {"host": "127.0.0.1", "port": 18000, "request_timeout_s": 3600.0}
    assert config["grpc_options"] == {"port": 19000, "grpc_servicer_functions": [GRPC_SERVICER]}
    assert config["proxy_location"] == "HeadOnly"
    (entry,) = config["applications"]
    assert entry["name"] == "tiny" and entry["route_prefix"] == "/tiny"
    assert entry["import_path"] == EMBEDDED_IMPORT_PATH
    assert set(entry["args"]) == EMBEDDED_ARGS
    assert entry["args"]["engine"] == {"max_sequences": 8}
    assert (entry["args"]["min_replicas"], entry["args"]["max_replicas"]) == (2, 2)
    assert entry["args"]["served_name"] == "SmolLM2-135M-Instruct" and entry["args"]["num_cpus"] == 1


@pytest.mark.parametrize(("max_ongoing", "target"), [(150, 120), (64, 51), (1, 1), (2, 1), (10, 8)])
def test_autoscaling_target_is_matrix_formula(max_ongoing, target):
    app = Application(name="a", model="m", max_ongoing_requests=max_ongoing)
    assert app.target_ongoing_requests == target == max(int(0.8 * max_ongoing), 1)


def test_engine_defaults_and_explicit_values():
    assert Application(name="a", model="m").max_ongoing_requests == 64
    vllm = Application(name="b", model="m", engine="vllm", min_replicas=8)
    assert (vllm.max_ongoing_requests, vllm.target_ongoing_requests, vllm.max_replicas) == (150, 120, 8)
    explicit = Application(name="c", model="m", target_ongoing_requests=7, min_replicas=1, max_replicas=4)
    assert (explicit.target_ongoing_requests, explicit.max_replicas) == (7, 4)


def test_vllm_app_shape_prefix_caching_and_router():
    app = Application(name="8B", model="meta-llama/Llama-3.1-8B-Instruct", engine="vllm", min_replicas=8,
                      tensor_parallel_size=2, engine_args={"max_model_len": 8192}, accelerator_type="H100")
    config = render_serve_config([app], ProxyOptions(8000, 9000, http_host="0.0.0.0", proxy_location="EveryNode"))
    ServeDeploySchema.model_validate(config)
    (entry,) = config["applications"]
    assert entry["import_path"] == VLLM_IMPORT_PATH and entry["route_prefix"] == "/8B"
    (llm,) = entry["args"]["llm_configs"]
    assert llm["model_loading_config"] == {"model_id": "meta-llama/Llama-3.1-8B-Instruct",
                                           "model_source": "meta-llama/Llama-3.1-8B-Instruct"}
    assert llm["engine_kwargs"] == {"tensor_parallel_size": 2, "enable_prefix_caching": True, "max_model_len": 8192}
    deployment = llm["deployment_config"]
    assert deployment["autoscaling_config"] == {"min_replicas": 8, "max_replicas": 8, "target_ongoing_requests": 120}
    assert deployment["max_ongoing_requests"] == 150
    assert deployment["request_router_config"] == {"request_router_class": PREFIX_ROUTER}
    assert llm["accelerator_type"] == "H100"


def test_prefix_router_path_names_a_real_class():
    module, _, cls = PREFIX_ROUTER.partition(":")
    source = Path(ray.__file__).parent.joinpath(*module.split(".")[1:]).with_suffix(".py")
    assert f"class {cls}(" in source.read_text()


def test_vllm_llm_config_passes_ray_serve_llm_validation():
    """Ray's own LLMConfig accepts the rendered spec (the router is left out: validating it imports vLLM)."""
    llm_config = pytest.importorskip("ray.llm._internal.serve.core.configs.llm_config")
    app = Application(name="8B", model="meta-llama/Llama-3.1-8B-Instruct", engine="vllm", min_replicas=2,
                      num_cpus=4, tensor_parallel_size=2)
    spec = render_serve_config([app], PROXY)["applications"][0]["args"]["llm_configs"][0]
    spec["deployment_config"].pop("request_router_config")
    parsed = llm_config.LLMConfig.model_validate(spec)
    assert parsed.model_id == "meta-llama/Llama-3.1-8B-Instruct"
    assert parsed.engine_kwargs["enable_prefix_caching"] is True
    assert parsed.placement_group_config == {"bundle_per_worker": {"CPU": 4, "GPU": 1}, "strategy": "STRICT_PACK"}


def test_shipped_configs_load_and_render():
    apps = [app for name in ("embedded_tiny", "embedded_grpc", "vllm_8b")
            for app in load_applications(ROOT / "configs" / "serving" / f"{name}.yaml")]
    assert [(a.name, a.engine, a.use_grpc, a.min_replicas) for a in apps] == [
        ("tiny", "embedded", False, 2), ("tiny_grpc", "embedded", True, 1), ("8B", "vllm", False, 8)]
    ServeDeploySchema.model_validate(render_serve_config(apps, PROXY))


def test_yaml_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "apps.yaml"
    path.write_text("applications:\n  - name: ok\n    model: m\n  - name: bad\n    model: m\n    min_replica: 1\n"
                    "    max_replicass: 3\n")
    with pytest.raises(DeployError) as err:
        load_applications(path)
    message = str(err.value)
    assert f"{path}:4" in message and "applications[1]" in message
    assert "'max_replicass'" in message and "did you mean 'max_replicas'" in message


@pytest.mark.parametrize(("spec", "field"), [
    ({"name": "a", "model": "m", "min_replicas": -1}, "min_replicas"),
    ({"name": "a", "model": "m", "min_replicas": 3, "max_replicas": 2}, "max_replicas"),
    ({"name": "a", "model": "m", "engine": "sglang"}, "engine"),
    ({"name": "a b", "model": "m"}, "name"),
    ({"name": "a", "model": "m", "max_ongoing_requests": 0}, "max_ongoing_requests"),
    ({"name": "a", "model": "m", "engine": "vllm", "use_grpc": True}, "use_grpc"),
    ({"name": "a", "model": "m", "engine_args": {"max_sequence": 4}}, "engine_args.max_sequence"),
    ({"name": "a", "model": "m", "tensor_parallel_size": 2}, "tensor_parallel_size"),
    ({"name": "a"}, "'model' is required"),
])
def test_invalid_specs_name_the_field(spec, field):
    with pytest.raises(DeployError, match="--applications\\[0\\]") as err:
        parse_applications(repr([spec]))
    assert field in str(err.value)


def test_matrix_style_literal_and_json_strings():
    matrix = "[{'model_name': 'SmolLM2-135M-Instruct', 'min_replica': 2, 'app_name': 'tiny', 'use_grpc': True}]"
    (app,) = parse_applications(matrix)
    assert (app.name, app.model, app.min_replicas, app.max_replicas, app.use_grpc) == (
        "tiny", "SmolLM2-135M-Instruct", 2, 2, True)
    (same,) = parse_applications(json.dumps([{"name": "tiny", "model": "SmolLM2-135M-Instruct", "min_replicas": 2,
                                              "use_grpc": True}]))
    assert same == app
    assert parse_names("['a', {'name': 'b'}]") == ["a", "b"]
    assert [a.name for a in parse_applications("[{name: y, model: m}, {name: z, model: m}]")] == ["y", "z"]  # YAML
    with pytest.raises(DeployError, match="expected a list"):
        parse_applications("42")
    with pytest.raises(DeployError, match="not a Python literal, JSON or YAML list"):
        parse_applications("[{name: y")


def test_actions_replace_add_remove():
    a, b, b2 = (Application(name="a", model="m"), Application(name="b", model="m"),
                Application(name="b", model="other"))
    assert merge([a], [b], "replace") == [b]
    assert merge([a, b], [b2], "add") == [a, b2]
    assert merge([a, b], ["a"], "remove") == [b]
    with pytest.raises(DeployError, match="unknown application.*'zz'.*deployed: a, b"):
        merge([a, b], ["zz"], "remove")
    with pytest.raises(DeployError, match="unique"):
        render_serve_config([a, Application(name="a", model="x")], PROXY)


def _fake_cluster(tmp_path: Path, apps: list[Application]) -> ClusterState:
    """A state folder as start_cluster + deploy_applications leave it (no processes behind it)."""
    state = ClusterState.locate("c1", tmp_path)
    state.folder.mkdir(parents=True)
    state.write_head(HeadInfo(host="127.0.0.1", gcs_port=1, dashboard_port=2, http_port=18000, grpc_port=19000,
                              http_host="127.0.0.1", proxy_location="HeadOnly", launcher="local", pid=1))
    save_deployment(state.deployment_file, apps, render_serve_config(apps, PROXY))
    return state


def test_deployment_file_round_trips_and_is_serve_deployable(tmp_path):
    apps = [Application(name="tiny", model="SmolLM2-135M-Instruct", token="t0k"),
            Application(name="g", model="m", use_grpc=True, served_name="g-model")]
    state = _fake_cluster(tmp_path, apps)
    assert load_deployment(state.deployment_file) == apps
    ServeDeploySchema.model_validate(yaml.safe_load(state.deployment_file.read_text()))


def test_endpoints_resolve_names_urls_and_grpc(tmp_path, monkeypatch):
    _fake_cluster(tmp_path, [Application(name="tiny", model="SmolLM2-135M-Instruct", token="t0k"),
                             Application(name="g", model="m", use_grpc=True, served_name="g-model")])
    tiny = resolve("tiny", cluster_id="c1", coral_dir=tmp_path)
    assert (tiny.protocol, tiny.address, tiny.model, tiny.token) == (
        "http", "http://127.0.0.1:18000/tiny/v1", "SmolLM2-135M-Instruct", "t0k")
    grpc = resolve("g", cluster_id="c1", coral_dir=tmp_path)
    assert (grpc.protocol, grpc.address, grpc.app_name, grpc.model) == ("grpc", "127.0.0.1:19000", "g", "g-model")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("CORAL_API_TOKEN", "envtoken")
    url = resolve("http://host:1/app/v1")
    assert (url.protocol, url.address, url.token) == ("http", "http://host:1/app/v1", "envtoken")
    assert resolve("grpc://h:5/app") == resolve("grpc://h:5/app") and resolve("grpc://h:5/app").app_name == "app"
    assert resolve("grpc://h:5").app_name is None
    with pytest.raises(UnknownEndpoint) as err:
        resolve("nope", cluster_id="c1", coral_dir=tmp_path)
    assert "deployed: g, tiny" in str(err.value) and str(tmp_path) in str(err.value)
    assert "t0k" not in repr(tiny)


def test_backend_for_builds_the_right_client(tmp_path):
    from coral.backends.grpc_client import GrpcBackend
    from coral.backends.http import OpenAIHTTPBackend

    _fake_cluster(tmp_path, [Application(name="tiny", model="SmolLM2-135M-Instruct"),
                             Application(name="g", model="m", use_grpc=True)])
    http = backend_for("tiny", cluster_id="c1", coral_dir=tmp_path)
    assert isinstance(http, OpenAIHTTPBackend) and http.url == "http://127.0.0.1:18000/tiny/v1/chat/completions"
    assert http.model == "SmolLM2-135M-Instruct"
    grpc = backend_for("g", model="override", cluster_id="c1", coral_dir=tmp_path)
    assert isinstance(grpc, GrpcBackend)
    assert (grpc.target, grpc.app_name, grpc.model) == ("127.0.0.1:19000", "g", "override")


def test_cluster_state_folder_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("CORAL_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("CORAL_CLUSTER_ID", "from_env")
    assert ClusterState.locate().folder == tmp_path / "env" / "from_env"
    assert ClusterState.locate("x", tmp_path).folder == tmp_path / "x"
    monkeypatch.delenv("CORAL_CLUSTER_ID")
    assert ClusterState.locate().folder.name.endswith("_cluster")


def test_slurm_options_become_submitit_parameters():
    params = slurm_parameters(SlurmClusterOptions.from_dict({
        "account": "acc", "qos": "high", "partition": "gpu", "gpus_per_node": 8, "cpus_per_task": 16, "mem_gb": 200,
        "timeout_min": 60, "slurm_constraint": "h100", "exclude": "node1", "head_cpus_per_task": 4,
        "use_array": False}))
    assert params == {"slurm_account": "acc", "slurm_qos": "high", "slurm_partition": "gpu", "gpus_per_node": 8,
                      "cpus_per_task": 16, "mem_gb": 200, "timeout_min": 60, "slurm_constraint": "h100",
                      "slurm_exclude": "node1"}
    assert [_slurm_minutes(t) for t in ("infinite", "30", "2:00:00", "1-00:00:00", "45:10")] == [
        None, 30, 120, 1440, 45]



def test_slurm_options_are_typed_bounded_and_name_an_unknown_key():
    options = SlurmClusterOptions.from_dict({"slurm_partition": "gpu", "gpus_per_node": 8, "gres": "gpu:8",
                                             "mem": "1G", "mem_gb": 200, "timeout_min": 5, "head_mem_gb": 16})
    assert (options.partition, options.gpus_per_node, options.extra) == ("gpu", 8, {"gres": "gpu:8", "mem": "1G"})
    assert (options.head_cpus_per_task, options.use_array, options.proxy_location) == (2, True, "EveryNode")
    # beside workers the head does no model work: no GPUs, its own CPUs and memory
    assert options.head_job().submitit_parameters() == {"slurm_partition": "gpu", "cpus_per_task": 2, "mem_gb": 16,
                                                        "timeout_min": 5, "slurm_mem": "1G"}
    for bad, message in [({"partiton": "gpu"}, "slurm.partiton: unknown option (did you mean 'partition'?)"),
                         ({"extra": {"mail_usr": "me"}}, "slurm.extra.mail_usr: unknown option (did you mean "
                                                         "'mail_user'?)"),
                         ({"gpus_per_node": -1}, "slurm.gpus_per_node: must be an integer >= 0, got -1"),
                         ({"cpus_per_task": "8"}, "slurm.cpus_per_task: must be an integer >= 1, got '8'"),
                         ({"mem_gb": 0}, "slurm.mem_gb: must be a number > 0, got 0"),
                         ({"proxy_location": "Everywhere"}, "slurm.proxy_location: must be one of")]:
        with pytest.raises(ConfigError) as err:
            SlurmClusterOptions.from_dict(bad)
        assert str(err.value).startswith(message)


def test_cli_names_an_unknown_slurm_option_before_starting_anything(tmp_path, capsys):
    assert cli.main(["start_cluster", "--coral_dir", str(tmp_path), "--slurm", "{partiton: gpu}"]) == 1
    assert ("coral-serve start_cluster: error: slurm.partiton: unknown option (did you mean 'partition'?)"
            in capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []  # no state folder, no token, no job

def test_cli_flags_map_to_launchers():
    parse = cli.build_parser().parse_args
    local, slurm = cli._location(parse(["start_cluster", "--add_workers", "2", "--cpus_per_worker", "3"]))
    assert (local, slurm) == ({"cpus_per_worker": 3}, None)
    local, slurm = cli._location(parse(["start_cluster", "--slurm", "{'qos': 'q'}", "--account", "a",
                                        "--cpus_per_worker", "4", "--gpus", "8", "--time", "90"]))
    assert local is None
    assert slurm == {"qos": "q", "account": "a", "timeout_min": 90, "cpus_per_task": 4, "gpus_per_node": 8}
    assert cli._location(parse(["start_cluster", "--local"])) == ({}, None)
    assert cli._location(parse(["start_cluster", "--add_workers", "1"])) == (None, None)
    # plain sizes follow the recorded cluster's launcher
    assert cli._location(parse(["start_cluster", "--gpus", "8"]), "slurm") == (None, {"gpus_per_node": 8})
    with pytest.raises(ClusterError, match="drop --local"):
        cli._location(parse(["start_cluster", "--local", "--qos", "q"]))


def test_cli_reports_bad_input_as_one_line(tmp_path, capsys):
    code = cli.main(["deploy_applications", "--coral_dir", str(tmp_path), "--applications",
                     "[{'name': 'x', 'model': 'm', 'min_replicas': -2}]"])
    assert code == 1
    assert "min_replicas must be an integer >= 0" in capsys.readouterr().err
    code = cli.main(["deploy_applications", "--coral_dir", str(tmp_path), "--applications",
                     "[{'name': 'x', 'model': 'm'}]"])
    assert code == 1 and "no cluster" in capsys.readouterr().err
    assert cli.main(["check_health", "--coral_dir", str(tmp_path), "--app_name", "missing"]) == 1
    assert '"ok": false' in capsys.readouterr().out


def test_cli_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for verb in cli.VERBS:
        assert verb in text
