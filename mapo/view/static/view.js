// mapo view: the table is Tabulator's (sorting, header filters, virtual scrolling); this file only
// wires the server's JSON to it and draws one item. Every model or dataset text goes into the page
// through textContent (el() below), never as markup.
"use strict";

const state = { views: [], runs: [], view: null, table: null, flags: new Set(), search: "" };
let readyResolve;
window.mapoView = { ready: new Promise((r) => { readyResolve = r; }), state };

// ------------------------------------------------------------------ DOM helpers (text only)

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "href") node.setAttribute("href", safeHref(v));
    else if (k === "open") node.open = true;
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function safeHref(v) {
  const s = String(v);
  // this server's paths only: no scheme, no protocol-relative //host
  return (s.startsWith("/") && !s.startsWith("//")) || s.startsWith("#") ? s : "#";
}

function pre(text, cls) {
  return el("pre", { class: cls }, text === null || text === undefined ? "(none)" : String(text));
}

function fmt(x, digits = 2) {
  if (x === null || x === undefined) return "–";
  if (typeof x === "number") return Number.isInteger(x) ? String(x) : x.toFixed(digits);
  return String(x);
}

const SHORT = { model_a: "A", model_b: "B", tie: "tie" };

function labelClass(v) {
  const s = String(v ?? "");
  if (s === "A" || s === "B" || s === "tie" || s === "failed" || s === "decisive") return "lab lab-" + s;
  if (s === "no pair") return "lab lab-no-pair";
  return s && s !== "–" ? "lab lab-mixed" : "lab";
}

// ------------------------------------------------------------------ the table

function textFormatter(cell) {
  const v = cell.getValue();
  return el("span", {}, v === null || v === undefined ? "" : fmt(v, 3));
}

function labelFormatter(cell) {
  const v = cell.getValue();
  return el("span", { class: labelClass(v) }, v === null || v === undefined ? "" : String(v));
}

function titleFormatter(cell) {
  return el("span", {}, cell.getValue());
}

function columnsOf(view) {
  return view.columns.map((c) => ({
    title: c.title,
    field: c.field,
    width: c.width || undefined,
    minWidth: 60,
    headerTooltip: c.tip || c.title,
    titleFormatter,
    formatter: c.kind === "label" ? labelFormatter : textFormatter,
    sorter: c.kind === "number" ? "number" : "string",
    headerFilter: "input",
    headerFilterPlaceholder: "filter",
  }));
}

function applyFilters() {
  const t = state.table;
  if (!t) return;
  const filters = [...state.flags].map((f) => ({ field: "f_" + f, type: "=", value: true }));
  if (state.search) {
    const any = state.view.columns
      .filter((c) => c.kind !== "number")
      .map((c) => ({ field: c.field, type: "like", value: state.search }));
    filters.push(any);
  }
  if (filters.length) t.setFilter(filters);
  else t.clearFilter();
}

function showCount() {
  const t = state.table;
  const n = t.getDataCount("active");
  const all = t.getDataCount();
  document.getElementById("count").textContent = `${n.toLocaleString()} of ${all.toLocaleString()} rows`;
}

async function getJSON(url) {
  const r = await fetch(url);
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

async function openView(view, itemId) {
  state.view = view;
  state.flags.clear();
  for (const b of document.querySelectorAll("#views button")) b.classList.toggle("on", b.dataset.view === view.id);
  const runs = document.getElementById("runs");
  runs.replaceChildren(
    ...view.runs.map((r) =>
      el("span", { class: "run" }, " ", el("span", { title: r.path }, `${r.label} (${r.command}, ${r.status})`), " ",
        r.report ? el("a", { href: r.report, id: "report-link-" + r.index }, "report") : null)
    )
  );
  const notes = document.getElementById("notes");
  notes.replaceChildren(...view.notes.map((n) => el("span", {}, n, el("br"))));
  const filters = document.getElementById("filters");
  filters.replaceChildren(
    el("span", { class: "meta" }, "show only: "),
    ...view.filters.map((f) => {
      const box = el("input", { type: "checkbox", id: "flag-" + f.id, "data-flag": f.id });
      box.addEventListener("change", () => {
        if (box.checked) state.flags.add(f.id);
        else state.flags.delete(f.id);
        applyFilters();
      });
      return el("label", {}, box, " ", f.title);
    })
  );
  const sorts = document.getElementById("sorts");
  sorts.replaceChildren(
    ...view.sorts.map((s) => {
      const b = el("button", { type: "button", id: "sort-" + s.field }, "sort by " + s.title);
      b.addEventListener("click", () => state.table.setSort(s.field, "desc"));
      return b;
    })
  );
  const { rows } = await getJSON(`/api/rows?view=${encodeURIComponent(view.id)}`);
  if (state.table) state.table.destroy();
  const table = new Tabulator("#table", {
    data: rows,
    index: "id",
    columns: columnsOf(view),
    maxHeight: "52vh",
    layout: "fitDataStretch",
    placeholder: "no rows",
  });
  state.table = table;
  await new Promise((resolve) => table.on("tableBuilt", resolve));
  table.on("dataFiltered", () => setTimeout(showCount));
  table.on("rowClick", (e, row) => openItem(row.getData().id));
  showCount();
  document.getElementById("item").replaceChildren(el("p", { class: "hint" }, "Click a row to open the item."));
  if (itemId) await openItem(itemId);
}

// ------------------------------------------------------------------ one item

async function openItem(id) {
  const box = document.getElementById("item");
  let item;
  try {
    item = await getJSON(`/api/item?view=${encodeURIComponent(state.view.id)}&id=${encodeURIComponent(id)}`);
  } catch (e) {
    box.replaceChildren(el("p", { class: "fail" }, String(e.message || e)));
    return;
  }
  history.replaceState(null, "", `#view=${encodeURIComponent(state.view.id)}&item=${encodeURIComponent(id)}`);
  const parts = item.kind === "evaluate" ? evaluateItem(item) : item.kind === "build" ? buildItem(item) : recordItem(item);
  box.replaceChildren(el("h2", { id: "item-title" }, "item ", item.id), ...parts);
  box.dataset.item = item.id;
  box.scrollIntoView({ block: "start" });
}

function rawTexts(raw, title) {
  const texts = Array.isArray(raw) ? raw : raw ? [raw] : [];
  if (!texts.length) return null;
  return el("details", { open: true, class: "raw" }, el("summary", {}, `${title} (${texts.length})`),
    ...texts.map((t) => pre(t, "raw-text")));
}

function logprobTable(dists) {
  if (!Array.isArray(dists) || !dists.length) return null;
  return el("table", { class: "kv" },
    el("tr", {}, el("th", {}, "value"), el("th", {}, "token"), el("th", {}, "top alternatives (probability)")),
    ...dists.map((d) => {
      const top = Object.entries(d.top || {}).sort((a, b) => b[1] - a[1]).slice(0, 8)
        .map(([tok, lp]) => `${JSON.stringify(tok)} ${(Math.exp(lp) * 100).toFixed(1)}%`).join(", ");
      return el("tr", {}, el("td", {}, d.value), el("td", {}, JSON.stringify(d.token)), el("td", {}, top));
    }));
}

function attempts(list) {
  if (!Array.isArray(list) || !list.length) return null;
  // open when logprobs decided the verdict (judge.scoring=expected): the distribution is the reason
  const open = list.some((a) => Array.isArray(a.logprobs) && a.logprobs.length);
  return el("details", { class: "attempts", open }, el("summary", {}, `attempts (${list.length}): per order, parsed verdict, logprobs`),
    ...list.map((a, i) => {
      const v = a.verdict || {};
      return el("div", { class: "rec" },
        el("div", { class: "meta" }, `attempt ${i + 1}, order ${a.order || "–"}: pick ${fmt(v.pick)}, score A ${fmt(v.score_a)} / B ${fmt(v.score_b)}`,
          v.failure ? el("span", { class: "fail" }, " · failure: ", v.failure) : null,
          a.scoring ? ` · scoring: ${typeof a.scoring === "string" ? a.scoring : JSON.stringify(a.scoring)}` : null),
        logprobTable(a.logprobs),
        ...(a.raw || []).map((t) => pre(t, "raw-text")));
    }));
}

function verdictLine(r) {
  return el("div", { class: "meta" },
    `order ${r.order || "–"}: pick ${fmt(r.pick)} → label `, el("span", { class: labelClass(SHORT[r.label] || (r.label ? r.label : "failed")) }, SHORT[r.label] || r.label || "none"),
    r.score_a !== null && r.score_a !== undefined ? `, scores A ${fmt(r.score_a)} / B ${fmt(r.score_b)}` : "",
    r.human ? `, human ${SHORT[r.human] || r.human}` : "",
    r.failure ? el("span", { class: "fail" }, " · failure: ", r.failure) : null);
}

// a multi-turn item's earlier turns, in order, before its judged question (item.turns: mapo/view/data.py);
// a single-turn item has none and its page is as before
function earlierTurns(item, who) {
  if (!Array.isArray(item.turns) || !item.turns.length) return [];
  const of = ` of ${item.turn}`;
  return [el("div", { class: "turns", id: "item-turns" },
    el("h3", {}, `conversation: ${item.turns.length} earlier turn${item.turns.length > 1 ? "s" : ""}, then turn ${item.turn}${of} (${who.judged})`),
    ...item.turns.map((t) => el("div", { class: "turn", "data-turn": t.turn },
      el("div", { class: "meta" }, `turn ${t.turn}${of} · user`), pre(t.user),
      t.user_b !== undefined ? el("div", {}, el("div", { class: "meta" }, `turn ${t.turn}${of} · user, as response B's model was asked`), pre(t.user_b)) : null,
      "answer" in t
        ? el("div", {}, el("div", { class: "meta" }, `turn ${t.turn}${of} · assistant (${who.shared})`), pre(t.answer))
        : el("div", { class: "cols" },
          el("div", {}, el("div", { class: "meta" }, `turn ${t.turn}${of} · response A's model answered`), pre(t.answer_a)),
          el("div", {}, el("div", { class: "meta" }, `turn ${t.turn}${of} · response B's model answered`), pre(t.answer_b))))))];
}

function reference(item) {
  return item.reference ? [el("h3", {}, "reference answer"), pre(item.reference)] : [];
}

function evaluateItem(item) {
  const turns = earlierTurns(item, { judged: "judged", shared: "both responses' models saw this answer" });
  const out = [
    el("p", {}, "human label: ", el("span", { class: labelClass(SHORT[item.human]) , id: "item-human" }, SHORT[item.human] || item.human || "–")),
    ...turns,
    el("h3", {}, turns.length ? `question: turn ${item.turn} of ${item.turn}, the one judged` : "question"), pre(item.question),
    ...reference(item),
    el("div", { class: "cols" },
      el("div", {}, el("h3", {}, "response A"), pre(item.response_a)),
      el("div", {}, el("h3", {}, "response B"), pre(item.response_b))),
    el("h3", {}, `evaluators (${item.evaluators.length})`),
  ];
  const evs = item.evaluators.map((e) => {
    const recs = e.records.map((r) => el("div", { class: "rec" }, verdictLine(r), memberVotes(r), debateTurns(r),
      rawTexts(Array.isArray((r.detail || {}).utterances) ? null : r.raw, "raw text"), attempts((r.detail || {}).attempts)));
    const jurors = e.jurors.length ? el("details", { class: "jurors" }, el("summary", {}, `jurors' judgements (${e.jurors.length})`),
      ...e.jurors.map((j) => el("div", { class: "rec" }, el("strong", {}, j.judge), verdictLine(j), rawTexts(j.raw, "raw text")))) : null;
    return el("div", { class: "ev" }, el("h3", {}, e.name), el("div", { class: "meta" }, `${e.setup} · run ${e.run}`), ...recs, jurors);
  });
  // two evaluators side by side; more stack
  out.push(evs.length === 2 ? el("div", { class: "cols" }, ...evs.map((x) => el("div", {}, x))) : el("div", {}, ...evs));
  return out;
}

function memberVotes(r) {
  const members = (r.detail || {}).members;
  if (!members) return null;
  return el("table", { class: "kv votes" }, el("tr", {}, el("th", {}, "juror"), el("th", {}, "vote")),
    ...Object.entries(members).map(([m, v]) => el("tr", {}, el("td", {}, m), el("td", {}, el("span", { class: labelClass(SHORT[v] || "failed") }, SHORT[v] || v || "failed")))),
    el("tr", {}, el("td", {}, "aggregate"), el("td", {}, `${fmt(r.detail.aggregate)}, tie break ${fmt(r.detail.tie_break)}, failed ${fmt(r.detail.n_failed)}`)));
}

function debateTurns(r) {
  const d = r.detail || {};
  if (!Array.isArray(d.utterances)) return null;
  return el("details", { class: "debate", open: true }, el("summary", {}, `debate transcript (${d.utterances.length} turns, ${fmt(d.rounds)} rounds, ${fmt(d.aggregate)})`),
    ...d.utterances.map((u, i) => el("div", { class: "rec" }, el("div", { class: "meta" }, `turn ${i + 1} · round ${fmt(u.round)} · ${u.role} (${u.model})`), pre(u.text, "raw-text"))),
    d.finals ? el("div", {}, el("div", { class: "meta" }, "final scores"), pre(JSON.stringify(d.finals, null, 1))) : null);
}

function buildItem(item) {
  const g = item.generation || {};
  const s = item.selection || {};
  const out = [
    el("p", {}, "outcome: ", el("span", { class: labelClass(item.outcome), id: "item-outcome" }, item.outcome), item.reason ? ` (${item.reason})` : ""),
    ...earlierTurns(item, { judged: "answered and judged", shared: item.answered_by === "generator" ? "the generator's answer, before the loop" : "as the prompt gives it" }),
    el("h3", {}, item.turns ? `prompt: turn ${item.turn} of ${item.turn}, the one answered and judged` : "prompt"), pre(item.prompt),
    ...reference(item),
  ];
  for (const p of item.pairs) {
    out.push(el("h3", {}, `pair: chosen iteration ${p.chosen_iteration + 1} (score ${fmt(p.chosen_score)}) vs rejected iteration ${p.rejected_iteration + 1} (score ${fmt(p.rejected_score)}), judge margin ${fmt(p.margin)}${p.decisive ? "" : ", a kept tie"}`));
    out.push(el("div", { class: "cols diff" },
      el("div", {}, el("div", { class: "meta" }, "chosen (words not in rejected marked)"), el("pre", {}, ...p.diff.chosen.map(([c, t]) => c ? el("span", { class: "chg-chosen" }, t) : t))),
      el("div", {}, el("div", { class: "meta" }, "rejected (words not in chosen marked)"), el("pre", {}, ...p.diff.rejected.map(([c, t]) => c ? el("span", { class: "chg-rejected" }, t) : t)))));
  }
  out.push(el("h3", {}, `feedback iterations (${(g.iterations || []).length})`));
  for (const it of g.iterations || []) {
    const chosen = s.best === it.index ? " · chosen by the judge" : "";
    out.push(el("div", { class: "rec" },
      el("div", { class: "meta" }, `iteration ${it.index + 1} · reviewer score ${fmt(it.score)} · finish ${fmt(it.finish_reason)}${chosen}`),
      pre(it.response),
      ...(it.reviews || []).map((r) => el("div", { class: "rec" },
        el("div", { class: "meta" }, `review by ${r.reviewer}: score ${fmt(r.score)}`, r.failure ? el("span", { class: "fail" }, " · failure: ", r.failure) : null),
        r.feedback ? el("div", {}, el("strong", {}, "feedback: "), pre(r.feedback)) : null,
        r.evaluation ? el("div", {}, el("strong", {}, "evaluation: "), pre(r.evaluation)) : null,
        el("details", {}, el("summary", {}, "reviewer raw text"), ...(r.raw || []).map((t) => pre(t, "raw-text")))))));
  }
  out.push(el("h3", {}, `judge: ${fmt(s.method)}, chose iteration ${s.best === null || s.best === undefined ? "none" : s.best + 1}`),
    s.failure ? el("p", { class: "fail" }, s.failure) : null);
  for (const j of s.judgements || []) {
    out.push(el("div", { class: "rec judgement" },
      el("div", { class: "meta" }, `iteration ${j.a + 1} vs ${j.b + 1} (${j.judge}, ${j.strategy}${j.scale ? "/" + j.scale : ""}): label `,
        el("span", { class: labelClass(SHORT[j.label] || "failed") }, SHORT[j.label] || j.label || "failed"),
        `, scores ${fmt(j.score_a)} / ${fmt(j.score_b)}`, j.failure ? el("span", { class: "fail" }, " · ", j.failure) : null),
      ...(j.attempts || []).map((a) => el("div", { class: "rec" },
        el("div", { class: "meta" }, `order ${a.order}: pick ${fmt((a.verdict || {}).pick)}, scores ${fmt((a.verdict || {}).score_a)} / ${fmt((a.verdict || {}).score_b)}`),
        logprobTable(a.logprobs), ...(a.raw || []).map((t) => pre(t, "raw-text"))))));
  }
  return out;
}

function recordItem(item) {
  const out = [];
  for (const [title, text] of item.texts || []) out.push(el("h3", {}, title), pre(text));
  const r = item.record || {};
  if (r.raw) out.push(rawTexts(r.raw, "raw text"));
  out.push(el("h3", {}, "record"), pre(JSON.stringify(r, null, 1)));
  return out;
}

// ------------------------------------------------------------------ start

function fromHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  return { view: h.get("view"), item: h.get("item") };
}

async function start() {
  const data = await getJSON("/api/views");
  state.views = data.views;
  state.runs = data.runs;
  const nav = document.getElementById("views");
  nav.replaceChildren(...state.views.map((v) => {
    const b = el("button", { type: "button", "data-view": v.id }, v.title);
    b.addEventListener("click", () => openView(v));
    return b;
  }));
  document.getElementById("search").addEventListener("input", (e) => {
    state.search = e.target.value.trim();
    applyFilters();
  });
  const want = fromHash();
  const m = location.pathname.match(/^\/r\/(\d+)\/view\.html$/);
  const byRun = m ? (state.runs.find((r) => String(r.index) === m[1]) || {}).view : null;
  const view = state.views.find((v) => v.id === (want.view || byRun)) || state.views[0];
  if (view) await openView(view, want.item);
  readyResolve(true);
}

window.addEventListener("hashchange", () => {
  const want = fromHash();
  const view = state.views.find((v) => v.id === want.view);
  if (view && view !== state.view) openView(view, want.item);
  else if (want.item && state.view) openItem(want.item);
});
start().catch((e) => {
  document.getElementById("item").replaceChildren(el("p", { class: "fail" }, "mapo view: ", String(e.message || e)));
  readyResolve(false);
});
