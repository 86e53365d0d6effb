"""The benchmark harness keeps working: every benchmark runs on tiny sizes against real components.

Asserts structure and counts (turns, tokens, shares, recomputed <= sent), never timings: rates only have to be
positive. Run from the repository root (``python -m pytest tests/benchmarks``), where ``benchmarks`` imports.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks import (
    common,
    engine_efficiency,
    extraction_cost,
    http_clients,
    orchestration,
    prefix_reuse,
    run,
)
from benchmarks.common import Check, Section, Stat
from benchmarks.extraction_cost import ALL
from coral.backends.embedded import EmbeddedBackend, EngineConfig
from coral.backends.models import DEFAULT_MODEL
from coral.records import ConversationRecord, Turn, Usage

VLLM_METRICS = """\
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1200.0
vllm:prefix_cache_queries_total{engine="1",model_name="m"} 800.0
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 900.0
vllm:prefix_cache_hits_total{engine="1",model_name="m"} 500.0
vllm:num_requests_running{engine="0",model_name="m"} 3.0
process_open_fds 12
"""


@pytest.fixture(scope="module")
def engine() -> EmbeddedBackend:
    return EmbeddedBackend(DEFAULT_MODEL, EngineConfig(threads=1))


# ---------------------------------------------------------------------------------------------- 1. orchestration
def test_orchestration_runs_every_turn_of_every_conversation():
    result = orchestration.measure("mmlu_pro", orchestration.Sizes(6, turns=3, concurrency=4))
    assert (result.conversations, result.turns) == (6, 18)
    assert result.turns_per_s > 0 and result.us_per_turn > 0 and result.cpu_seconds >= 0


def test_orchestration_section_has_rows_per_task_and_the_target():
    sizes = {"mmlu_pro": orchestration.Sizes(4, turns=2), "math": orchestration.Sizes(2, turns=2)}
    section = orchestration.benchmark(sizes, repeats=2)
    assert len(section.rows) == 6
    assert len(section.rows[0].value.values) == 2  # one value per repeat
    [check] = section.checks
    assert (check.op, check.target) == (">=", orchestration.TARGET_TURNS_PER_S)


# ---------------------------------------------------------------------------------------------- 2. engine
@pytest.mark.slow
def test_offline_batch_replays_the_conversations_work(engine):
    sizes = engine_efficiency.Sizes(conversations=1, turns=3, tokens=3, concurrency=1, concurrent=2, request_tokens=3)
    result = engine_efficiency.measure(engine, sizes)
    conversations, offline = result.conversations.tokens, result.offline.tokens
    assert conversations.requests == offline.requests == 3  # 3 turns, never stopping early
    assert conversations.completion == offline.completion == 9  # ignore_eos: exactly 3 tokens a turn
    assert conversations.cached > 0 and offline.cached == 0  # prefix reuse in (b), none in the offline batch
    # The offline prompts are as long as what (b) computed, or the chat template's minimum when that is longer.
    assert offline.recomputed >= conversations.recomputed
    assert result.efficiency > 0 and result.single_per_s > 0 and result.concurrent_per_s > 0


@pytest.mark.slow
def test_filler_prompt_has_the_asked_length(engine):
    engine_efficiency.warm_up(engine)
    tokenizer = engine.engine().tokenizer
    encoded = tokenizer.apply_chat_template(
        engine_efficiency.filler(tokenizer, 57), tokenize=True, add_generation_prompt=True
    )
    assert len(encoded["input_ids"] if hasattr(encoded, "keys") else encoded) == 57


# ---------------------------------------------------------------------------------------------- 3. http
def test_both_http_clients_complete_requests_against_a_server_process():
    sizes = http_clients.Sizes(in_flight=(3,), rounds=2, naive_requests=4, latency_s=0.01)
    with http_clients.ServerProcess(sizes.latency_s) as base_url:
        [result] = http_clients.measure(base_url, sizes)
    assert result.in_flight == 3
    assert result.coral_per_s > 0 and result.naive_per_s > 0 and result.gain > 0


# ---------------------------------------------------------------------------------------------- 4. prefix reuse
@pytest.mark.slow
def test_embedded_prefix_reuse_recomputes_part_of_what_is_sent(engine):
    result = prefix_reuse.measure_embedded(engine, prefix_reuse.Sizes(conversations=1, turns=3, tokens=4))
    assert 0 < result.recomputed < result.sent
    assert 0 < result.share < 1


def test_vllm_counters_are_summed_over_engines_and_read_over_http():
    totals = prefix_reuse.metric_totals(VLLM_METRICS)
    assert prefix_reuse.prefix_counters(totals) == (2000.0, 1400.0)
    old_names = VLLM_METRICS.replace("vllm:prefix_cache", "vllm:gpu_prefix_cache")
    assert prefix_reuse.prefix_counters(prefix_reuse.metric_totals(old_names)) == (2000.0, 1400.0)
    with pytest.raises(ValueError, match="prefix-cache counters"):
        prefix_reuse.prefix_counters({"process_open_fds": 12.0})

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self):
            body = VLLM_METRICS.encode() if self.path == "/metrics" else b""
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        read = prefix_reuse.read_metrics(f"http://127.0.0.1:{server.server_port}/v1")
    finally:
        server.shutdown()
        server.server_close()
    assert read == totals


# ---------------------------------------------------------------------------------------------- 5. extraction
def test_extraction_shares_come_from_belief_methods_and_usage():
    def turn(index, method, judge_tokens=(0, 0)):
        return Turn(
            index, "teacher", "x", belief_method=method, usage=Usage(90, 10), extraction_usage=Usage(*judge_tokens)
        )

    turns = [
        Turn(0, "student", "q", generated=False),
        turn(1, "rule"),
        turn(2, "judge", (40, 10)),
        turn(3, "none"),
        turn(4, "rule"),
    ]
    record = ConversationRecord("e", 0, "math", 0, "h", "coral", {"teacher": "m"}, turns, "max_turns", 4)
    counts = extraction_cost.tally([record])
    assert counts[ALL].turns == counts["math"].turns == 4
    assert [counts["math"].share(m) for m in extraction_cost.METHODS] == [0.5, 0.25, 0.25]
    assert counts["math"].judge_token_share == 50 / 450


def test_every_task_has_data_to_run_on():
    for name in extraction_cost.ALL_TASKS:
        setup = extraction_cost.task_setup(name)
        assert setup.data.exists(), name


@pytest.mark.slow
def test_extraction_run_on_the_real_model(engine):
    sizes = extraction_cost.Sizes(tasks=("mmlu_pro",), examples=1, turns=2, tokens=8)
    counts = extraction_cost.measure(engine, sizes)
    assert counts[ALL].turns == counts["mmlu_pro"].turns == 2
    assert sum(counts[ALL].share(m) for m in extraction_cost.METHODS) == pytest.approx(1.0)
    assert (counts[ALL].judge_tokens > 0) == (counts[ALL].methods["judge"] > 0)


# ---------------------------------------------------------------------------------------------- harness
def test_stat_check_and_report():
    spread = Stat((3.0, 1.0, 2.0))
    assert (spread.median, spread.low, spread.high, spread.format(0)) == (2.0, 1.0, 3.0, "2 (1-3)")
    assert Stat((5.0,)).format(1) == "5.0"
    assert Check("a", 0.25, "<=", 0.3).passed and not Check("b", 4.0, ">=", 5.0).passed
    section = Section("x", "X", checks=[Check("b", 4.0, ">=", 5.0)])
    text = common.report([section], "quick", 12.0, common.machine())
    for expected in ("| cpu |", "| torch |", "| commit |", "**MISS** b: 4", "## X"):
        assert expected in text


def test_run_writes_the_report_for_the_chosen_benchmarks(tmp_path, monkeypatch):
    monkeypatch.setattr(orchestration, "QUICK", {"mmlu_pro": orchestration.Sizes(3, turns=2)})
    output = tmp_path / "RESULTS.md"
    assert run.main(["--quick", "--only", "orchestration", "--repeats", "1", "--output", str(output)]) == 0
    text = output.read_text()
    assert "1. Orchestration ceiling" in text and "orchestration turns/s (MMLU-Pro)" in text
    assert "Engine limit" not in text
    with pytest.raises(SystemExit):
        run.parse_args(["--only", "orchestra"])
