// The conversation browser of a coral report (inlined into report.html by coral.report.page).
// The index (one row per conversation) is parsed at load; a conversation's record is parsed only when opened,
// from its own JSON element "c<run>-<row>". Record text is model output: it is written with textContent only.
"use strict";
(function () {
  const INDEX = JSON.parse(document.getElementById("index").textContent);
  const COL = Object.fromEntries(INDEX.columns.map((name, i) => [name, i]));
  const PAGE = 50;
  const state = { run: 0, page: 0, shown: [] };
  const keys = [];  // per run, lazily: "example\u0000sample" -> row number (to line up the runs compared)
  const $ = (id) => document.getElementById(id);

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  const rowsOf = (run) => INDEX.runs[run].rows;
  const keyOf = (row) => row[COL.example_id] + "\u0000" + row[COL.sample_index];

  function rowOfKey(run, key) {
    if (!keys[run]) keys[run] = new Map(rowsOf(run).map((row, i) => [keyOf(row), i]));
    return keys[run].get(key);
  }

  // ------------------------------------------------------------------------------------------ filtering
  function query() {
    // The search runs over each record's JSON text as embedded, so the query is escaped the same way.
    const text = $("f-search").value.trim().toLowerCase();
    return text ? JSON.stringify(text).slice(1, -1).replace(/</g, "\\u003c") : "";
  }

  function recordText(run, i) {
    const node = $(`c${run}-${i}`);
    return node ? node.textContent.toLowerCase() : "";
  }

  function applyFilters() {
    const outcome = $("f-outcome").value, agreed = $("f-agreed").value, errored = $("f-errored").value;
    const stop = $("f-stop").value, search = query(), run = state.run;
    state.shown = [];
    rowsOf(run).forEach((row, i) => {
      if (outcome && row[COL.outcome] !== outcome) return;
      if (agreed && (row[COL.agreed_at] !== null) !== (agreed === "1")) return;
      if (errored && String(row[COL.errored]) !== errored) return;
      if (stop && row[COL.stop_reason] !== stop) return;
      if (search && !recordText(run, i).includes(search)) return;
      state.shown.push(i);
    });
    state.page = 0;
    renderList();
  }

  // ------------------------------------------------------------------------------------------ the list
  function renderList() {
    const rows = rowsOf(state.run), total = state.shown.length;
    const pages = Math.max(1, Math.ceil(total / PAGE));
    state.page = Math.min(state.page, pages - 1);
    const start = state.page * PAGE, end = Math.min(start + PAGE, total);
    const fragment = document.createDocumentFragment();
    for (const i of state.shown.slice(start, end)) fragment.append(listRow(rows[i], i));
    $("list").tBodies[0].replaceChildren(fragment);
    const filtered = total < rows.length ? ` (filtered from ${rows.length})` : "";
    $("count").textContent = total ? `${start + 1}–${end} of ${total} conversations${filtered}`
      : `no conversation matches${filtered}`;
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
  }

  function listRow(row, i) {
    const outcome = row[COL.outcome];
    const agreed = row[COL.agreed_at];
    return el("tr", { class: "conv", "data-row": String(i), "data-outcome": outcome },
      el("td", { text: row[COL.example_id] }),
      el("td", { class: "num", text: String(row[COL.sample_index]) }),
      el("td", { class: outcome.replace(" ", "-"), text: outcome }),
      el("td", { class: "num", text: agreed === null ? "–" : `turn ${agreed}` }),
      el("td", { class: row[COL.errored] ? "errored" : "", text: row[COL.stop_reason] }),
      el("td", { class: "num", text: String(row[COL.turns]) }),
      el("td", { class: "num", text: row[COL.tokens].toLocaleString("en-US") }),
      el("td", { text: row[COL.belief] ?? "–" }),
      el("td", { text: row[COL.gold] ?? "–" }),
      el("td", { class: "preview", text: row[COL.preview] }));
  }

  // ------------------------------------------------------------------------------------------ one conversation
  function open(run, i) {
    const row = rowsOf(run)[i], key = keyOf(row);
    const views = INDEX.runs.map((_, other) => conversationView(other, other === run ? i : rowOfKey(other, key)));
    $("detail-title").textContent = `example ${row[COL.example_id]}, sample ${row[COL.sample_index]}`;
    $("detail-body").replaceChildren(...views);
    $("detail").hidden = false;
  }

  function conversationView(run, i) {
    const title = el("h3", { text: INDEX.runs[run].label });
    const node = i === undefined ? null : $(`c${run}-${i}`);
    if (!node) {
      const why = i === undefined ? "this example is not in this run" : "still loading; try again in a moment";
      return el("div", { class: "conv" }, title, el("p", { class: "missing", text: why }));
    }
    const record = JSON.parse(node.textContent, exactIntegers);
    const agents = Object.entries(record.agents).map(([speaker, model]) => `${speaker}: ${model}`).join(", ");
    const head = facts([
      ["task", record.task], ["protocol", record.protocol], ["agents", agents], ["gold", record.gold ?? "–"],
      ["stop reason", record.stop_reason], ["turns", `${record.turns.length - 1} of at most ${record.max_turns}`],
      ["run seed", String(record.run_seed)],
    ]);
    const metrics = el("details", null, el("summary", { text: "this conversation's metrics" }),
      facts(Object.entries(record.metrics).map(([name, value]) => [name, value === null ? "–" : String(value)])));
    const turns = record.turns.map((turn) => turnView(turn, record));
    return el("div", { class: "conv", "data-run": String(run) }, title, head, metrics, ...turns);
  }

  // Seeds are 64-bit: a JavaScript number would round them, so integers past 2^53 keep their source text.
  function exactIntegers(key, value, context) {
    return Number.isInteger(value) && !Number.isSafeInteger(value) && context ? context.source : value;
  }

  function facts(pairs) {
    const list = el("dl", { class: "facts" });
    for (const [name, value] of pairs) if (value !== null) list.append(el("dt", { text: name }), el("dd", null, value));
    return list;
  }

  // Records before roles were recorded: in the coral protocol the opening speaker asks and the other answers.
  const roleOf = (turn, record) => turn.role
    ?? (record.protocol === "coral" ? (turn.speaker === record.turns[0].speaker ? "asker" : "answerer") : null);

  function grade(turn) {
    if (turn.error) return el("span", { class: "badge errored", text: "error" });
    if (turn.correct === true) return el("span", { class: "badge correct", text: "correct" });
    if (turn.correct === false) return el("span", { class: "badge incorrect", text: turn.belief === null ? "no belief" : "incorrect" });
    return null;
  }

  function turnView(turn, record) {
    const look = turn.error ? "is-error" : turn.correct === true ? "is-correct" : turn.correct === false ? "is-incorrect" : "";
    const role = roleOf(turn, record);
    const head = el("div", { class: "turn-head" }, el("span", { text: `turn ${turn.index}` }),
      el("span", { text: turn.speaker + (role ? ` (${role})` : "") }),
      turn.generated ? null : el("span", { class: "badge", text: "opening message" }),
      grade(turn), turn.agreement ? el("span", { class: "badge agree", text: "agrees" }) : null);
    const body = [head, el("pre", { class: "text", text: turn.text })];
    if (turn.generated) body.push(turnFacts(turn));
    if (turn.siblings.length) body.push(siblingsView(turn.siblings));
    return el("div", { class: `turn ${look}`, "data-index": String(turn.index) }, ...body);
  }

  function tokens(usage) {
    return `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion`;
  }

  function turnFacts(turn) {
    const judged = turn.belief_method === "judge" || turn.judge_reply !== null;
    const reply = turn.judge_reply === null ? null
      : el("details", null, el("summary", { text: "judge's raw reply" }), el("pre", { text: turn.judge_reply }));
    const failures = turn.failures.length ? el("ol", null, ...turn.failures.map((f) => el("li", { text: f }))) : null;
    return facts([
      ["model", turn.model],
      ["belief", turn.belief ?? "none (unsure)"],
      ["extracted by", `${turn.belief_method ?? "–"}${turn.belief_class === null ? "" : `, class ${turn.belief_class}`}`],
      ["judge reply", reply],
      ["extraction error", turn.extraction_error],
      ["grade", turn.correct === null ? "–" : turn.correct ? "correct" : "incorrect"],
      ["agreement", turn.agreement ? "yes" : "no"],
      ["tokens", tokens(turn.usage)],
      ["judge tokens", judged ? tokens(turn.extraction_usage) : null],
      ["latency", `${turn.latency_s.toFixed(2)} s`],
      ["finish reason", turn.finish_reason],
      ["seed", turn.seed === null ? null : String(turn.seed)],
      ["attempts", turn.attempts > 1 ? String(turn.attempts) : null],
      ["failures", failures],
      ["replica", turn.replica],
      ["error", turn.error],
    ]);
  }

  function siblingsView(siblings) {
    const views = siblings.map((sibling) => el("div", { class: "sibling" },
      el("div", { class: "turn-head" }, el("span", { text: `seed ${sibling.seed}` }), grade(sibling),
        sibling.agreement ? el("span", { class: "badge agree", text: "agrees" }) : null),
      el("pre", { text: sibling.error ?? sibling.text }),
      facts([["belief", sibling.belief ?? "none (unsure)"], ["tokens", tokens(sibling.usage)]])));
    return el("details", { class: "siblings" }, el("summary", { text: `${siblings.length} tree siblings` }), ...views);
  }

  // ------------------------------------------------------------------------------------------ wiring
  function fillSelect(select, values) {
    select.replaceChildren(select.options[0], ...values.map((value) => el("option", { text: value })));
  }

  function chooseRun(run) {
    state.run = run;
    fillSelect($("f-stop"), [...new Set(rowsOf(run).map((row) => row[COL.stop_reason]))].sort());
    applyFilters();
  }

  const runSelect = $("f-run");
  runSelect.replaceChildren(...INDEX.runs.map((r, i) => el("option", { value: String(i), text: r.label })));
  $("run-label").hidden = INDEX.runs.length < 2;
  runSelect.addEventListener("change", () => chooseRun(Number(runSelect.value)));
  for (const id of ["f-outcome", "f-agreed", "f-errored", "f-stop"]) $(id).addEventListener("change", applyFilters);
  let typing = 0;
  $("f-search").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(applyFilters, 250); });
  $("prev").addEventListener("click", () => { state.page -= 1; renderList(); });
  $("next").addEventListener("click", () => { state.page += 1; renderList(); });
  $("list").tBodies[0].addEventListener("click", (event) => {
    const row = event.target.closest("tr.conv");
    if (row) open(state.run, Number(row.dataset.row));
  });
  $("close").addEventListener("click", () => { $("detail").hidden = true; });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") $("detail").hidden = true; });
  chooseRun(0);
  performance.mark("coral:list-ready");  // what benchmarks/report_load.py measures
})();
