// The gallery page: the trial list with filters, one trial's page, and two trials side by side.
// Served by `python -m threestudio.gallery` (data from /api/...) or exported with --export (data from data.js).

const STATIC_DATA = window.GALLERY_DATA || null;
const $ = (sel, el = document) => el.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;",
  '"': "&quot;", "'": "&#39;" }[c]));

const api = {
  async trials() {
    if (STATIC_DATA) return STATIC_DATA.trials;
    const r = await fetch("api/trials", { cache: "no-store" });
    return r.json();
  },
  async trial(id) {
    if (STATIC_DATA) return STATIC_DATA.details[id];
    const r = await fetch("api/trial?id=" + encodeURIComponent(id), { cache: "no-store" });
    if (!r.ok) throw new Error(`trial ${id}: ${r.status}`);
    return r.json();
  },
  file(rel) {
    return "files/" + rel.split("/").map(encodeURIComponent).join("/");
  },
};

let TRIALS = [];
const selected = new Set();

function fmtTime(s) {
  if (s === null || s === undefined || isNaN(s)) return "";
  s = Number(s);
  if (s < 90) return `${s.toFixed(0)} s`;
  if (s < 5400) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function fmtBest(b) {
  if (!b || b.value === undefined) return "";
  return `${esc(b.name)} ${Number(b.value).toFixed(b.name.includes("psnr") ? 2 : 4)}`;
}

function matches(t) {
  const recipe = $("#f-recipe").value, status = $("#f-status").value;
  const text = $("#f-text").value.trim().toLowerCase();
  if (recipe && t.name !== recipe) return false;
  if (status && t.status !== status) return false;
  if (text) {
    const hay = [t.prompt, t.dataroot, t.tag, t.trial, t.name].join(" ").toLowerCase();
    if (!text.split(/\s+/).every((w) => hay.includes(w))) return false;
  }
  return true;
}

function fillSelect(sel, values) {
  const keep = sel.value;
  sel.innerHTML = '<option value="">all</option>' +
    [...new Set(values)].filter(Boolean).sort().map((v) => `<option>${esc(v)}</option>`).join("");
  sel.value = keep;
}

function renderList() {
  const rows = $("#rows");
  const shown = TRIALS.filter(matches);
  rows.innerHTML = shown.map((t) => `
    <tr data-id="${esc(t.id)}">
      <td><input type="checkbox" class="pick" ${selected.has(t.id) ? "checked" : ""} title="select to compare"></td>
      <td>${esc(t.name)}</td>
      <td class="prompt" title="${esc(t.prompt || t.dataroot || "")}">${esc(t.prompt || t.dataroot || t.tag || "")}</td>
      <td><span class="badge ${esc(t.status)}">${esc(t.status)}</span></td>
      <td>${t.steps ?? ""}${t.max_steps ? " / " + t.max_steps : ""}</td>
      <td>${fmtTime(t.train_time_s)}</td>
      <td>${fmtBest(t.best)}</td>
      <td>${esc(t.trial)}</td>
    </tr>`).join("");
  $("#empty").hidden = TRIALS.length > 0;
  rows.querySelectorAll("tr").forEach((tr) => {
    tr.addEventListener("click", (ev) => {
      if (ev.target.classList.contains("pick")) return;
      location.hash = "trial=" + encodeURIComponent(tr.dataset.id);
    });
    tr.querySelector(".pick").addEventListener("change", (ev) => {
      if (ev.target.checked) selected.add(tr.dataset.id); else selected.delete(tr.dataset.id);
      while (selected.size > 2) selected.delete(selected.values().next().value);
      renderList();
    });
  });
  $("#compare").disabled = selected.size !== 2;
  markOpen();
}

async function loadList() {
  TRIALS = await api.trials();
  fillSelect($("#f-recipe"), TRIALS.map((t) => t.name));
  fillSelect($("#f-status"), TRIALS.map((t) => t.status));
  renderList();
}

// ---------------------------------------------------------------------------------------------- one trial
function curveSvg(name, c) {
  const n = c.step.length;
  const W = 300, H = 120, P = 4;
  const xs = c.step, ys = c.value.filter((v) => isFinite(v));
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const sx = (x) => P + (W - 2 * P) * (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5);
  const sy = (y) => H - P - (H - 2 * P) * (y1 > y0 ? (y - y0) / (y1 - y0) : 0.5);
  const pts = c.step.map((x, i) => `${sx(x).toFixed(1)},${sy(isFinite(c.value[i]) ? c.value[i] : y0).toFixed(1)}`);
  return `<div class="curve-box"><div class="title"><span>${esc(name)}</span><span>${n} points</span></div>
    <svg class="curve" viewBox="0 0 ${W} ${H + 14}" data-column="${esc(name)}" data-points="${n}"
      preserveAspectRatio="none"><polyline points="${pts.join(" ")}"/>
      <text x="2" y="${H + 12}">step ${x0}–${x1}</text>
      <text x="${W - 2}" y="${H + 12}" text-anchor="end">${y0.toPrecision(4)} – ${y1.toPrecision(4)}</text></svg></div>`;
}

function defaultColumns(cols) {
  const names = Object.keys(cols);
  const pick = names.filter((n) => /^(train\/loss|val\/|test\/)/.test(n));
  return (pick.length ? pick : names).slice(0, 6);
}

function configHtml(text, overrides) {
  const keys = new Set(overrides.map((o) => o.split("=")[0].replace(/^\+/, "")));
  const stack = [];
  return text.split("\n").map((line) => {
    const m = line.match(/^(\s*)([^\s:#-][^:]*):/);
    let set = false;
    if (m) {
      const depth = m[1].length;
      while (stack.length && stack[stack.length - 1].depth >= depth) stack.pop();
      stack.push({ depth, key: m[2].trim() });
      set = keys.has(stack.map((s) => s.key).join("."));
    }
    return set ? `<span class="set">${esc(line)}</span>` : esc(line);
  }).join("\n");
}

function paneHtml(d) {
  const m = d.media;
  const videos = m.videos.map((v) => v.endsWith(".gif")
    ? `<figure><img src="${api.file(v)}" alt=""><figcaption>${esc(v.split("/").pop())}</figcaption></figure>`
    : `<figure><video src="${api.file(v)}" controls loop muted playsinline preload="metadata"></video>
       <figcaption>${esc(v.split("/").slice(3).join("/"))}</figcaption></figure>`).join("");
  const grids = m.grids.length ? `
    <h3>Validation over steps</h3>
    <label>step <input type="range" class="grid-step" min="0" max="${m.grids.length - 1}" value="${m.grids.length - 1}">
      <span class="grid-label"></span></label>
    <div class="grid-images media"></div>` : "";
  const meshes = m.meshes.map((g) => `<figure><model-viewer src="${api.file(g)}" camera-controls auto-rotate
      interaction-prompt="none" shadow-intensity="0" exposure="1" alt="exported mesh"></model-viewer>
      <figcaption>${esc(g.split("/").slice(3).join("/"))}</figcaption></figure>`).join("");
  const splats = m.splats.map((s) => `<figure><canvas class="splat" data-src="${api.file(s)}"></canvas>
      <button class="load-splat">show ${esc(s.split("/").pop())}</button></figure>`).join("");
  const cols = d.curves.columns;
  const names = Object.keys(cols).sort();
  const shownCols = defaultColumns(cols);
  const overrides = d.overrides || [];
  return `<div class="pane" data-id="${esc(d.id)}">
    <h2>${esc(d.name)} / ${esc(d.trial)} <span class="badge ${esc(d.status)}">${esc(d.status)}</span></h2>
    <div class="facts">${esc(d.prompt || d.dataroot || "")}<br>
      ${d.steps ?? "?"}${d.max_steps ? " / " + d.max_steps : ""} steps · ${fmtTime(d.train_time_s)} of training ·
      ${fmtBest(d.best)}</div>
    <h3>Commands</h3>
    <code class="cmd">${esc(d.commands.resume)}</code><code class="cmd">${esc(d.commands.test)}</code>
    <code class="cmd">${esc(d.commands.export)}</code>
    ${videos ? `<h3>Videos</h3><div class="media">${videos}</div>` : ""}
    ${grids}
    ${meshes ? `<h3>Meshes</h3><div class="media meshes">${meshes}</div>` : ""}
    ${splats ? `<h3>Gaussians</h3><div class="media splats">${splats}</div>` : ""}
    <h3>Curves (csv_logs/metrics.csv, ${d.curves.rows} rows)</h3>
    <div class="column-picker">${names.map((n) => `<label><input type="checkbox" value="${esc(n)}"
      ${shownCols.includes(n) ? "checked" : ""}> ${esc(n)}</label>`).join(" ")}</div>
    <div class="curves"></div>
    <h3>Config (configs/parsed.yaml${overrides.length ? "; highlighted: set on the command line" : ""})</h3>
    <pre class="config">${configHtml(d.config, overrides)}</pre>
  </div>`;
}

function wirePane(pane, d) {
  const m = d.media;
  const slider = $(".grid-step", pane);
  if (slider) {
    const show = () => {
      const g = m.grids[Number(slider.value)];
      $(".grid-label", pane).textContent = g.step;
      $(".grid-images", pane).innerHTML = g.images.map((p) => `<img src="${api.file(p)}" alt="">`).join("");
    };
    slider.addEventListener("input", show);
    show();
  }
  const drawCurves = () => {
    const picked = [...pane.querySelectorAll(".column-picker input:checked")].map((i) => i.value);
    $(".curves", pane).innerHTML = picked.map((n) => curveSvg(n, d.curves.columns[n])).join("");
  };
  pane.querySelectorAll(".column-picker input").forEach((i) => i.addEventListener("change", drawCurves));
  drawCurves();
  pane.querySelectorAll(".load-splat").forEach((b) => b.addEventListener("click", () => showSplat(b)));
}

async function showSplat(button) {
  const canvas = button.previousElementSibling;
  button.disabled = true;
  button.textContent = "loading...";
  try {
    const SPLAT = await import("./vendor/gsplat.es.js");
    const scene = new SPLAT.Scene(), camera = new SPLAT.Camera();
    const renderer = new SPLAT.WebGLRenderer(canvas);
    const controls = new SPLAT.OrbitControls(camera, canvas);
    await SPLAT.PLYLoader.LoadAsync(canvas.dataset.src, scene, () => {});
    const frame = () => { controls.update(); renderer.render(scene, camera); requestAnimationFrame(frame); };
    requestAnimationFrame(frame);
    button.remove();
  } catch (e) {
    button.textContent = "cannot show: " + e.message;
  }
}

async function showTrials(ids) {
  const detail = $("#detail");
  const ds = await Promise.all(ids.map((id) => api.trial(id)));
  detail.innerHTML = `<div class="panes ${ds.length > 1 ? "two" : ""}">${ds.map(paneHtml).join("")}</div>`;
  detail.querySelectorAll(".pane").forEach((p, i) => wirePane(p, ds[i]));
  markOpen();
}

function openIds() {
  const h = decodeURIComponent(location.hash.slice(1));
  if (h.startsWith("trial=")) return [h.slice(6)];
  if (h.startsWith("compare=")) return h.slice(8).split("|");
  return [];
}

function markOpen() {
  const open = new Set(openIds());
  document.querySelectorAll("#rows tr").forEach((tr) => tr.classList.toggle("open", open.has(tr.dataset.id)));
}

async function route() {
  const ids = openIds();
  if (ids.length) await showTrials(ids); else $("#detail").innerHTML = "";
}

async function start() {
  ["#f-recipe", "#f-status", "#f-text"].forEach((s) => {
    $(s).addEventListener("input", renderList);
    $(s).addEventListener("change", renderList);
  });
  $("#compare").addEventListener("click", () => {
    location.hash = "compare=" + encodeURIComponent([...selected].join("|"));
  });
  window.addEventListener("hashchange", route);
  $("#root-info").textContent = STATIC_DATA ? "static export" : "live: refreshed every 10 s";
  await loadList();
  await route();
  document.body.dataset.ready = "1";
  if (!STATIC_DATA) setInterval(loadList, 10000);
}

start();
