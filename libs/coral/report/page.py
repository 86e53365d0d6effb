r"""The report as one self-contained HTML page: no network, CSS and JavaScript inlined, figures as data URIs.

The parts a reader checks first are plain HTML rendered here (run setup, configuration differences, the metrics
table with definitions, the figures). The conversation browser is ``report.js`` over two kinds of embedded data:
a compact index (one row per conversation: ids, outcome flags, stop reason, a short preview), parsed at load, and
each conversation's full record as its own JSON script element, placed after everything else and parsed only when
opened. So the list is up and usable before the browser has even read the records of a 10,000-conversation run.

Model output is untrusted: the HTML parts are escaped here and ``report.js`` writes text only through
``textContent``; ``<`` inside embedded JSON is written ``\u003c`` so no record can end its script element.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import yaml

from coral.metrics.aggregate import format_metric, metric_order
from coral.metrics.definitions import definition
from coral.report.model import MISSING, Conversation, Run, config_differences, setup
from coral.store import encode

PREVIEW_CHARS = 120
"""Characters of the opening message kept in the index (the full text is in the record)."""
SHORT_CHARS = 40
"""Characters of a final belief or gold answer kept in the index."""

INDEX_COLUMNS = (
    "example_id", "sample_index", "outcome", "agreed_at", "errored", "stop_reason", "turns", "tokens", "belief",
    "gold", "preview",
)
"""One index row per conversation, in this order (``report.js`` reads them by these names)."""


def render_page(runs: Sequence[Run], figures: Mapping[str, bytes]) -> str:
    """The whole report page for ``runs`` (one run, or several compared against the first)."""
    title = "coral report: " + " vs ".join(run.label for run in runs)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>{_e(title)}</title>",
        f"<style>{_asset('report.css')}</style>",
        "</head><body>",
        f"<header><h1>{_e(title)}</h1>{_nav()}</header><main>",
        _setup_section(runs),
        _metrics_section(runs),
        _figures_section(figures),
        _browser_section(),
        "</main>",
        _json_script("index", _index(runs)),
        f"<script>{_asset('report.js')}</script>",
        *_records(runs),
        "</body></html>",
    ]
    return "\n".join(parts)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _asset(name: str) -> str:
    return resources.files("coral.report").joinpath(name).read_text(encoding="utf-8")


def _nav() -> str:
    links = [("setup", "Setup"), ("metrics", "Metrics"), ("figures", "Figures"), ("browser", "Conversations")]
    return "<nav>" + "".join(f'<a href="#{anchor}">{text}</a>' for anchor, text in links) + "</nav>"


# ---------------------------------------------------------------------------------------------- static sections
def _setup_section(runs: Sequence[Run]) -> str:
    setups = [setup(run) for run in runs]
    rows = list(dict.fromkeys(key for values in setups for key in values))
    body = "".join(
        f"<tr><th>{_e(key)}</th>" + "".join(f"<td>{_e(values.get(key, '-'))}</td>" for values in setups) + "</tr>"
        for key in rows
    )
    table = f"<table class='setup'>{_run_header(runs, 'run')}{body}</table>"
    configs = "".join(
        f"<details><summary>{_e(run.label)}: config.yaml ({_e(run.folder)})</summary>"
        f"<pre>{_e(_yaml(run.config)) if run.config else 'no config.yaml in this folder'}</pre></details>"
        for run in runs
    )
    return f"<section id='setup'><h2>Setup</h2>{table}{_differences(runs) if len(runs) > 1 else ''}{configs}</section>"


def _yaml(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(config), sort_keys=False)


def _run_header(runs: Sequence[Run], first: str, *extra: str) -> str:
    cells = "".join(f"<th>{_e(run.label)}</th>" for run in runs) + "".join(f"<th>{_e(x)}</th>" for x in extra)
    return f"<thead><tr><th>{_e(first)}</th>{cells}</tr></thead>"


def _differences(runs: Sequence[Run]) -> str:
    differences = config_differences(runs)
    if not differences:
        return "<p>The runs' configurations are the same.</p>"
    body = "".join(
        f"<tr><th>{_e(key)}</th>" + "".join(f"<td>{_e(_config_value(v))}</td>" for v in values) + "</tr>"
        for key, values in differences.items()
    )
    return f"<h3>Configuration differences</h3><table class='diff'>{_run_header(runs, 'key')}{body}</table>"


def _config_value(value: Any) -> str:
    return value if value == MISSING else json.dumps(value, default=str)


def _metrics_section(runs: Sequence[Run]) -> str:
    names = metric_order(dict.fromkeys(name for run in runs for name in run.metrics))
    compat = runs[0].compat
    deltas = [f"Δ {run.label}" for run in runs[1:]]
    head = _run_header(runs, "metric", *deltas, "definition" + (" (compat)" if compat else ""))
    rows = []
    for name in names:
        values = [run.metrics.get(name) for run in runs]
        cells = "".join(
            f"<td class='num' data-metric='{_e(name)}' data-run='{number}'>{format_metric(value)}</td>"
            for number, value in enumerate(values)
        )
        cells += "".join(f"<td class='num delta'>{_delta(values[0], value)}</td>" for value in values[1:])
        cells += f"<td class='def'>{_e(definition(name, compat) or '')}</td>"
        rows.append(f"<tr><th><code>{_e(name)}</code></th>{cells}</tr>")
    note = "" if all(run.compat == compat for run in runs) else "<p>The runs mix compat and default definitions.</p>"
    return f"<section id='metrics'><h2>Metrics</h2>{note}<table class='metrics'>{head}{''.join(rows)}</table></section>"


def _delta(base: float | None, value: float | None) -> str:
    if base is None or value is None:
        return "-"
    difference = value - base
    return f"{difference:+d}" if isinstance(difference, int) else f"{difference:+.4f}"


def _figures_section(figures: Mapping[str, bytes]) -> str:
    images = "".join(
        f"<figure><img alt='{_e(name)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"
        f"<figcaption>{_e(name)}.png</figcaption></figure>"
        for name, data in figures.items()
    )
    return f"<section id='figures'><h2>Figures</h2><div class='figures'>{images}</div></section>"


def _browser_section() -> str:
    """The conversation browser's controls; ``report.js`` fills the options, the list and the detail view."""
    return """<section id="browser"><h2>Conversations</h2>
<div class="controls">
<label id="run-label">run <select id="f-run"></select></label>
<label>outcome <select id="f-outcome"><option value="">any</option><option>correct</option>
<option>incorrect</option><option>no answer</option></select></label>
<label>agreement <select id="f-agreed"><option value="">any</option><option value="1">agreed</option>
<option value="0">not agreed</option></select></label>
<label>errored <select id="f-errored"><option value="">any</option><option value="1">errored</option>
<option value="0">not errored</option></select></label>
<label>stop reason <select id="f-stop"><option value="">any</option></select></label>
<label>search <input id="f-search" type="search" placeholder="text in the conversation"></label>
</div>
<div class="pager"><button id="prev">&larr; previous</button><span id="count"></span>
<button id="next">next &rarr;</button></div>
<table id="list"><thead><tr><th>example</th><th>sample</th><th>outcome</th><th>agreed at</th><th>stop</th>
<th>turns</th><th>tokens</th><th>final belief</th><th>gold</th><th>opening message</th></tr></thead>
<tbody></tbody></table>
<div id="detail" hidden><div class="detail-bar"><span id="detail-title"></span>
<button id="close">close</button></div><div id="detail-body"></div></div>
</section>"""


# ---------------------------------------------------------------------------------------------- embedded data
def _json_script(element_id: str, data: Any) -> str:
    return _script(element_id, json.dumps(data, ensure_ascii=False, separators=(",", ":")))


def _script(element_id: str, text: str) -> str:
    r"""A JSON script element; ``<`` is escaped (JSON allows ``\u003c``) so the text cannot close the element."""
    escaped = text.replace("<", "\\u003c")
    return f'<script type="application/json" id="{element_id}">{escaped}</script>'


def _index(runs: Sequence[Run]) -> dict[str, Any]:
    return {
        "columns": INDEX_COLUMNS,
        "runs": [{"label": run.label, "rows": [_row(c) for c in run.conversations]} for run in runs],
    }


def _row(conversation: Conversation) -> list[Any]:
    record = conversation.record
    generated = [turn for turn in record.turns if turn.generated]
    belief = next((turn.belief for turn in reversed(generated) if turn.belief is not None), None)
    opening = " ".join(record.turns[0].text.split()) if record.turns else ""
    return [
        record.example_id,
        record.sample_index,
        conversation.outcome,
        conversation.agreed_at,
        int(conversation.errored),
        record.stop_reason,
        len(generated),
        conversation.tokens,
        _short(belief, SHORT_CHARS),
        _short(record.gold, SHORT_CHARS),
        _short(opening, PREVIEW_CHARS),
    ]


def _short(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def _records(runs: Sequence[Run]) -> list[str]:
    """Each record as stored (``coral.store.encode``), in its own element ``c<run>-<row>``, read when opened."""
    return [
        _script(f"c{number}-{row}", encode(conversation.record).rstrip("\n"))
        for number, run in enumerate(runs)
        for row, conversation in enumerate(run.conversations)
    ]
