"""The report model, page, figures and command line on a hand-built results folder (no browser)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from report_helpers import HAND_OUTCOMES, HOSTILE_TEXT, hand_records, write_store

from coral.metrics import aggregate
from coral.metrics.aggregate import format_metric
from coral.metrics.definitions import DEFINITIONS, definition
from coral.report import load_run, load_runs, write_report
from coral.report.__main__ import main as report_cli
from coral.report.model import (
    MISSING,
    accuracy_by_turn,
    agreement_by_turn,
    config_differences,
    setup,
    social_split,
    turns_to_agreement,
)
from lightning_modules.loggers import log_figures

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def by_id(run):
    return {c.record.example_id: c for c in run.conversations}


def test_run_reads_records_metrics_and_config_from_the_folder(hand_run):
    run = load_run(hand_run)
    assert run.label == "hand" and run.metrics_from_file and not run.compat
    assert run.metrics == json.loads((hand_run / "metrics.json").read_text())
    conversations = by_id(run)
    assert {name: c.outcome for name, c in conversations.items()} == HAND_OUTCOMES
    assert {name: c.agreed_at for name, c in conversations.items()} == {
        "right": 2, "wrong": 2, "unsure": None, "broken": None,
    }
    assert [name for name, c in conversations.items() if c.errored] == ["broken"]
    # 2 turns x (5 + 10), the sibling's 15 more for "right", the judge's 3 + 2 for "wrong"
    assert {name: c.tokens for name, c in conversations.items()} == {
        "right": 45, "wrong": 35, "unsure": 30, "broken": 30,
    }
    assert setup(run) == {
        "task": "mmlu_pro",
        "protocol": "coral",
        "models": "student: model-x, teacher: model-x",
        "run seed": "7",
        "max turns": "2",
        "conversations": "4",
        "config hash": "hand",
        "metrics": "metrics.json",
    }


def test_series_the_figures_plot(hand_run):
    run = load_run(hand_run)
    # turn 1: right A, wrong B, unsure none, broken A -> 2/4; turn 2: A, B, none (broken's errored: left out)
    assert accuracy_by_turn(run) == {1: 0.5, 2: pytest.approx(1 / 3)}
    assert agreement_by_turn(run) == {1: 0.0, 2: 0.5}
    assert turns_to_agreement(run) == {"2": 0.5, "never": 0.5}
    # persuasive turns: right's and wrong's turn 1 (the partner moved from unsure to their belief)
    assert social_split(run, "persuade") == {"correct": 0.5, "incorrect": 0.5, "unsure": 0.0}


def test_metrics_are_recomputed_when_metrics_json_is_missing(tmp_path):
    records = hand_records()
    run = load_run(write_store(tmp_path / "bare", records, metrics=False))
    assert not run.metrics_from_file and run.metrics == aggregate(records)
    assert setup(run)["metrics"] == "recomputed (no metrics.json)"


def test_configuration_differences_list_each_runs_value(tmp_path):
    first = write_store(tmp_path / "a" / "run", hand_records(), max_turns=2)
    second = write_store(tmp_path / "b" / "run", hand_records()[:2], max_turns=4)
    config = yaml_of(second)
    config["data"] = {"task": "mmlu_pro"}
    (second / "config.yaml").write_text(json.dumps(config))
    runs = load_runs([first, second])
    assert [run.label for run in runs] == ["a/run", "b/run"]  # same folder name: the parent tells them apart
    assert config_differences(runs) == {"data.task": [MISSING, "mmlu_pro"], "model.init_args.max_turns": [2, 4]}


def yaml_of(folder: Path) -> dict:
    import yaml

    return yaml.safe_load((folder / "config.yaml").read_text())


def test_page_shows_the_metrics_embeds_the_figures_and_escapes_model_output(hand_run):
    report = write_report([hand_run])
    assert report.html == hand_run / "report.html"
    page = report.html.read_text(encoding="utf-8")
    metrics = json.loads((hand_run / "metrics.json").read_text())
    cells = dict(re.findall(r"data-metric='([^']+)' data-run='0'>([^<]*)<", page))
    assert cells == {name: format_metric(value) for name, value in metrics.items()}
    assert set(report.figures) == {
        "accuracy_by_turn", "agreement_by_turn", "turns_to_agreement", "token_cost", "persuade_by_correctness",
        "assert_by_correctness",
    }
    for name, path in report.figures.items():
        data = path.read_bytes()
        assert path == hand_run / "figures" / f"{name}.png" and data.startswith(PNG)
        assert base64.b64encode(data).decode() in page  # the same bytes as the file beside the report
    # self-contained: no external reference; model output cannot end its script element
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert HOSTILE_TEXT not in page and "window.pwned" in page
    assert page.count("<script") == page.count("</script>") == 2 + 4  # index, app, one per record


def test_comparison_page_has_a_column_and_a_difference_per_run(tmp_path, hand_run):
    other = write_store(tmp_path / "other", hand_records()[:2])
    page = write_report([hand_run, other], tmp_path / "cmp" / "cmp.html").html.read_text()
    first, second = (json.loads((folder / "metrics.json").read_text()) for folder in (hand_run, other))
    row = re.search(r"<code>agreement</code></th>(.*?)</tr>", page).group(1)
    values = re.findall(r">([^<]+)</td>", row)
    assert values[:3] == [format_metric(first["agreement"]), format_metric(second["agreement"]), "+0.5000"]
    assert "Configuration differences" not in page and "The runs' configurations are the same." in page
    assert (tmp_path / "cmp" / "figures" / "token_cost.png").is_file()


def test_command_line_writes_the_report_or_names_the_missing_folder(tmp_path, hand_run, capsys):
    assert report_cli([str(hand_run), "-o", str(tmp_path / "out.html")]) == 0
    assert (tmp_path / "out.html").is_file() and "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        report_cli([str(tmp_path / "nowhere")])
    assert exit_.value.code == 2 and "nowhere: no conversations*.jsonl" in capsys.readouterr().err


def test_every_metric_has_a_definition_and_the_readme_names_the_same_metrics(hand_run):
    metrics = load_run(hand_run).metrics
    for name in metrics:
        assert definition(name) and definition(name, compat=True), name
    assert definition("agreement_correctness[order=first]").endswith("(within order=first)")
    assert definition("final_success_rate", compat=True) != definition("final_success_rate")
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| name | definition (default)") : readme.index("## The embedded engine")]
    named = set(re.findall(r"^\| `([^`]+)`", table, flags=re.M))
    named |= {f"{split}_{kind}_rate" for split in ("correct", "incorrect", "unsure") for kind in ("persuade", "assert")}
    named -= {"correct_/incorrect_/unsure_persuade_rate", "correct_/incorrect_/unsure_assert_rate"}
    assert named == set(DEFINITIONS)


def test_figures_are_logged_to_wandb_loggers_only(tmp_path):
    class RecordingWandb(WandbLogger):
        def __init__(self) -> None:  # no wandb run: only the image calls matter here
            self.images = []

        def log_image(self, key, images, **kwargs) -> None:
            self.images.append((key, images))

    wandb = RecordingWandb()
    figures = {"accuracy_by_turn": tmp_path / "a.png", "token_cost": tmp_path / "t.png"}
    log_figures([CSVLogger(tmp_path), wandb], figures)
    assert wandb.images == [
        ("report/accuracy_by_turn", [str(tmp_path / "a.png")]),
        ("report/token_cost", [str(tmp_path / "t.png")]),
    ]


def test_iterative_summary_plot_is_drawn_by_the_report_plotting_code(tmp_path, monkeypatch):
    from coral.report import plots
    from finetuning import iterative_training

    drawn = []
    original = plots.line_chart

    def spy(series, **kwargs):
        drawn.append(series)
        return original(series, **kwargs)

    monkeypatch.setattr(plots, "line_chart", spy)
    rows = [
        {"round": 0, "agreement_correctness": 0.25, "final_answer_accuracy": 0.5, "ever_correct": None},
        {"round": 1, "agreement_correctness": 0.5, "final_answer_accuracy": 0.75, "ever_correct": 0.8},
    ]
    iterative_training._plot(rows, tmp_path / "summary.png")
    assert drawn == [
        {
            "agreement_correctness": {0: 0.25, 1: 0.5},
            "final_answer_accuracy": {0: 0.5, 1: 0.75},
            "ever_correct": {1: 0.8},  # round 0 has none: left out, not drawn as 0
        }
    ]
    assert (tmp_path / "summary.png").read_bytes().startswith(PNG)


def test_vote_protocols_get_their_own_outcome_and_figures(tmp_path):
    from coral.metrics import write_metrics
    from coral.records import ConversationRecord, Outcome, Turn
    from coral.report.plots import report_figures
    from coral.store import ResultStore

    def answer(index, role, parent, correct):
        return Turn(index, role, "...", role=role, round=0, parent=parent, belief="B" if correct else "C",
                    belief_class=0 if correct else 1, correct=correct)

    turns = [Turn(0, "moderator", "Pick B.", generated=False, role="question"), answer(1, "generator", 0, False),
             Turn(2, "verifier", "Step 1 is wrong.", role="verifier", round=0, parent=1, carries_answer=False),
             answer(3, "refiner", 2, True)]
    vote = Outcome(answer="B", correct=1.0, decided_by="majority", votes={"B": 1}, voters=[3])
    record = ConversationRecord("q", 0, "mmlu_pro", 1, "h", "generate_verify_refine", {}, turns, "completed", 3,
                                gold="B", outcome=vote)
    ResultStore(tmp_path).append_many([record])
    write_metrics(tmp_path)
    loaded = load_run(tmp_path)
    assert [c.outcome for c in loaded.conversations] == ["correct"]
    assert loaded.metrics["self_correction_rate"] == 1.0 and loaded.metrics["rated_turns"] == 2.0
    assert set(report_figures([loaded])) == {"token_cost", "accuracy_by_role"}  # no Coral figure without Coral
    for name in loaded.metrics:
        assert definition(name), name
