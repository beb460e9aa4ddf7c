// The explorer's shell: hash routes, the search box, and the live feed from /ws.
import { api, h, showError } from "./dom.js";
import { pages } from "./pages.js";
import { jobPage } from "./job.js";

const routes = { ...pages, job: jobPage };
let current = { name: "", onBlock: null };
export const live = { height: 0, lastTimes: [] };

async function route() {
  const parts = (location.hash.replace(/^#\/?/, "") || "chain").split("/");
  const [name, arg] = [parts[0], decodeURIComponent(parts[1] || "")];
  const render = routes[name] || routes.chain;
  const page = document.getElementById("page");
  const token = {};
  current = { name, token, onBlock: null };
  page.replaceChildren(h("p", { class: "muted" }, "loading…"));
  try {
    const view = await render(arg, live);
    if (current.token !== token) return;  // the user moved on meanwhile
    page.replaceChildren(view.el);
    current.onBlock = view.onBlock || null;
    document.title = `${view.title || name} · stepchain explorer`;
  } catch (err) {
    if (current.token === token) page.replaceChildren(h("p", { class: "error" }, `${name}: ${err.message || err}`));
  }
}

async function search(ev) {
  ev.preventDefault();
  const q = document.getElementById("q").value.trim();
  if (/^\d+$/.test(q)) location.hash = `#/block/${q}`;
  else if (/^sc1[0-9a-f]{40}$/i.test(q)) location.hash = `#/account/${q.toLowerCase()}`;
  else if (/^[0-9a-f]{64}$/i.test(q)) {
    const hex = q.toLowerCase();
    try { await api(`/tx/${hex}`); location.hash = `#/tx/${hex}`; }
    catch { location.hash = `#/job/${hex}`; }
  } else showError(new Error("search for a block height, a tx hash, a job id or an sc1… address"));
}

function connect(delay = 500) {
  const conn = document.getElementById("conn");
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.addEventListener("open", () => { conn.textContent = "live"; conn.className = "on"; delay = 500; });
  ws.addEventListener("message", (msg) => {
    let ev;
    try { ev = JSON.parse(msg.data); } catch { return; }
    if (ev.type !== "block" || !(ev.height > live.height)) return;
    live.height = ev.height;
    live.lastTimes = [...live.lastTimes, ev.time_ms].slice(-20);
    document.getElementById("height").textContent = String(ev.height);
    if (current.onBlock) Promise.resolve(current.onBlock(ev)).catch(() => {});
  });
  ws.addEventListener("close", () => {
    conn.textContent = "reconnecting"; conn.className = "";
    setTimeout(() => connect(Math.min(delay * 2, 10000)), delay);
  });
}

async function start() {
  document.getElementById("search").addEventListener("submit", (ev) => search(ev).catch(showError));
  window.addEventListener("hashchange", route);
  try {
    const st = await api("/status");
    live.height = st.height;
    document.getElementById("height").textContent = String(st.height);
  } catch (err) { showError(err); }
  connect();
  await route();
}

start();
