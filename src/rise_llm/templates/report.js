// `rise report`'s page script: the charts (Plotly) and the trajectory browser.
// The data are the JSON of #report-data (report_html.report_data); the attempts come in
// gzip+base64 blobs (trajectories.pack), unpacked on first use with the browser's own
// DecompressionStream. When everything is drawn, <body data-ready="1"> (the browser test waits
// for it).
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const colour = (i) => PALETTE[i % PALETTE.length];
  const PLOT_CONFIG = { displaylogo: false, responsive: true };
  const LIST_PAGE = 100;

  function errorBars(points) {
    return {
      type: "data", symmetric: false, visible: true, thickness: 1.2,
      array: points.map((p) => p.high - p.value),
      arrayminus: points.map((p) => p.value - p.low),
    };
  }

  function layout(extra) {
    // the legend above the plot, where it covers neither the axis title nor the data
    return Object.assign({
      margin: { l: 55, r: 20, t: 40, b: 45 }, height: 340, hovermode: "closest",
      legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" },
    }, extra);
  }

  function drawCharts() {
    const turns = data.names.turns;
    Plotly.newPlot("chart-acc", data.models.map((m, i) => ({
      type: "scatter", mode: "lines+markers", name: m.label,
      x: m.curve.map((_, t) => t + 1), y: m.curve.map((c) => c.value),
      error_y: errorBars(m.curve), marker: { color: colour(i) }, line: { color: colour(i) },
    })), layout({
      xaxis: { title: { text: "turn" }, dtick: 1, range: [0.7, turns + 0.3] },
      yaxis: { title: { text: "accuracy" }, range: [0, 1] },
      height: 380,
    }), PLOT_CONFIG);
    const names = Object.keys(data.models[0].summary);
    Plotly.newPlot("chart-summary", data.models.map((m, i) => {
      const points = names.map((n) => m.summary[n] || { value: null, low: null, high: null });
      return {
        type: "bar", name: m.label, x: names, y: points.map((p) => p.value),
        error_y: errorBars(points.map((p) => (p.value === null ? { value: 0, low: 0, high: 0 } : p))),
        marker: { color: colour(i) },
      };
    }), layout({ barmode: "group", yaxis: { title: { text: "share of problems" }, range: [0, 1] } }),
    PLOT_CONFIG);
    const trained = data.iterations.filter((it) => it.training && it.training.loss.length);
    if (trained.length) {
      Plotly.newPlot("chart-loss", trained.map((it) => ({
        type: "scatter", mode: "lines", name: `${it.label} training loss`,
        x: it.training.loss.map((p) => p[0]), y: it.training.loss.map((p) => p[1]),
        line: { color: colour(data.models.findIndex((m) => m.label === it.label)) },
      })), layout({
        xaxis: { title: { text: "optimiser step" } },
        yaxis: { title: { text: "weighted loss" } }, height: 300,
      }), PLOT_CONFIG);
    }
  }

  // --- the trajectory browser ---------------------------------------------------------------
  const blobs = {};
  function unpack(name) {
    if (!blobs[name]) {
      blobs[name] = (async () => {
        const text = document.getElementById(`blob-${name}`).textContent.trim();
        const bytes = Uint8Array.fromBase64 ? Uint8Array.fromBase64(text)
          : Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
        const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
        return JSON.parse(await new Response(stream).text());
      })();
    }
    return blobs[name];
  }

  const browser = data.browser;
  const state = { model: data.models[0].label, filter: "all", query: "", shown: LIST_PAGE };
  let questions = null;

  function filterKeys() {
    const keys = [["all", "all episodes"]];
    for (let t = 2; t <= data.names.turns; t++) keys.push([`fixed@${t}`, `fixed at turn ${t}`]);
    for (const [key, text] of Object.entries(data.filters)) keys.push([key, text]);
    return keys;
  }

  function matches(entry, i) {
    if (state.filter !== "all" && !entry.tags[i].includes(state.filter)) return false;
    if (!state.query) return true;
    const p = entry.problem[i];
    const q = state.query.toLowerCase();
    return browser.ids[p].toLowerCase().includes(q)
      || (questions !== null && questions[p].toLowerCase().includes(q));
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function rewardBoxes(rewards) {
    const span = el("span", "rewards");
    rewards.forEach((r, t) => {
      const box = el("span", `reward r${r < 0 ? "m" : r}`, r === 1 ? "✓" : r === 0 ? "✗" : "∅");
      box.title = `turn ${t + 1}: reward ${r}`;
      span.appendChild(box);
    });
    return span;
  }

  function drawFilters() {
    const entry = browser.models[state.model];
    const box = document.getElementById("filters");
    box.replaceChildren();
    for (const [key, text] of filterKeys()) {
      const count = key === "all" ? entry.tags.length
        : entry.tags.filter((tags) => tags.includes(key)).length;
      const button = el("button", `filter${key === state.filter ? " active" : ""}`);
      button.dataset.filter = key;
      button.dataset.count = String(count);
      button.append(el("span", "name", text), el("span", "count", String(count)));
      button.addEventListener("click", () => {
        state.filter = key;
        state.shown = LIST_PAGE;
        drawFilters();
        drawList();
      });
      box.appendChild(button);
    }
  }

  function drawList() {
    const entry = browser.models[state.model];
    const list = document.getElementById("episode-list");
    list.replaceChildren();
    const hits = [];
    for (let i = 0; i < entry.problem.length; i++) if (matches(entry, i)) hits.push(i);
    list.dataset.matches = String(hits.length);
    list.appendChild(el("p", "muted", `${hits.length} episode${hits.length === 1 ? "" : "s"}`));
    for (const i of hits.slice(0, state.shown)) {
      const p = entry.problem[i];
      const row = el("div", "episode-row");
      row.dataset.episode = String(i);
      row.dataset.problem = browser.ids[p];
      row.append(el("span", "pid", browser.ids[p]), rewardBoxes(entry.rewards[i]),
        el("span", "question", questions ? questions[p].slice(0, 140) : ""));
      row.addEventListener("click", () => openEpisode(p));
      list.appendChild(row);
    }
    if (hits.length > state.shown) {
      const more = el("button", "more", `show ${Math.min(LIST_PAGE, hits.length - state.shown)} more`);
      more.addEventListener("click", () => { state.shown += LIST_PAGE; drawList(); });
      list.appendChild(more);
    }
  }

  function diffView(previous, current, ops) {
    const before = previous.split("\n");
    const after = current.split("\n");
    const box = el("div", "diff");
    const line = (cls, mark, text) => box.appendChild(el("div", `line ${cls}`, `${mark} ${text}`));
    for (let k = 0; k < ops.length; k += 5) {
      const [op, i1, i2, j1, j2] = ops.slice(k, k + 5);
      if (op === 0) {
        for (let j = j1; j < j2; j++) line("same", " ", after[j]);
      } else {
        for (let i = i1; i < i2; i++) line("del", "-", before[i]);
        for (let j = j1; j < j2; j++) line("ins", "+", after[j]);
      }
    }
    return box;
  }

  async function openEpisode(problem) {
    const detail = document.getElementById("episode-detail");
    detail.replaceChildren(el("p", "muted", "unpacking..."));
    const columns = el("div", "columns");
    // every model that saw the problem, in report order (base, iter1, ...), the chosen one marked
    let chosen = null;
    for (const label of Object.keys(browser.models)) {
      const entry = browser.models[label];
      const i = entry.problem.indexOf(problem);
      if (i < 0) continue;
      const attempts = (await unpack(entry.blob))[i];
      const column = el("div", label === state.model ? "column chosen" : "column");
      column.dataset.model = label;
      if (label === state.model) chosen = column;
      column.appendChild(el("h4", "", label));
      attempts.forEach(([response, answer, reward, ops, feedback], t) => {
        const attempt = el("div", `attempt r${reward < 0 ? "m" : reward}`);
        attempt.dataset.turn = String(t + 1);
        attempt.appendChild(el("div", "attempt-head",
          `turn ${t + 1} · reward ${reward} · answer ${answer === null ? "(none)" : answer}`));
        if (t === 0) {
          attempt.appendChild(el("pre", "response", response));
        } else if (response === attempts[t - 1][0]) {
          attempt.appendChild(el("div", "same-note", "identical to the attempt before"));
          attempt.appendChild(el("pre", "response", response));
        } else {
          attempt.appendChild(diffView(attempts[t - 1][0], response, ops));
        }
        // what the retry message after this attempt told the model (README "Feedback")
        if (feedback) attempt.appendChild(el("pre", "feedback", `feedback: ${feedback}`));
        column.appendChild(attempt);
      });
      columns.appendChild(column);
    }
    const header = el("div", "detail-head");
    header.append(el("h3", "", `Problem ${browser.ids[problem]}`),
      el("pre", "question-full", questions ? questions[problem] : ""));
    detail.replaceChildren(header, columns);
    detail.dataset.problem = browser.ids[problem];
    detail.scrollIntoView({ block: "start" });
    if (chosen) columns.scrollLeft = chosen.offsetLeft - columns.offsetLeft;
  }

  async function startBrowser() {
    const select = document.getElementById("model-select");
    select.addEventListener("change", () => {
      state.model = select.value;
      state.shown = LIST_PAGE;
      drawFilters();
      drawList();
    });
    document.getElementById("search").addEventListener("input", (event) => {
      state.query = event.target.value.trim();
      state.shown = LIST_PAGE;
      drawList();
    });
    drawFilters();
    drawList();
    questions = await unpack("problems");
    drawList();
  }

  drawCharts();
  startBrowser().then(() => { document.body.dataset.ready = "1"; });
})();
