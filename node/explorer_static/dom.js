// DOM helpers. Chain strings (monikers, job notes, tx bodies) only ever become text nodes
// (textContent), never HTML: h() has no way to set innerHTML.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "href") el.setAttribute("href", safeHref(v));
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Only in-page routes: a link built from chain data can never be javascript: or another site.
function safeHref(v) {
  const s = String(v);
  return s.startsWith("#/") ? s : "#/";
}

export const short = (s, n = 10) => (s && s.length > 2 * n + 1 ? `${s.slice(0, n)}…${s.slice(-4)}` : String(s ?? "-"));
export const num = (n) => (n === null || n === undefined ? "-" : Number(n).toLocaleString("en-US"));
export const ago = (ms) => {
  if (!ms) return "-";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 90 ? `${s}s ago` : s < 5400 ? `${Math.round(s / 60)}m ago` : new Date(ms).toLocaleString();
};

export const blockLink = (hgt) => h("a", { href: `#/block/${hgt}`, class: "mono" }, String(hgt));
export const txLink = (hash, n = 10) => h("a", { href: `#/tx/${hash}`, class: "mono", title: hash }, short(hash, n));
export const jobLink = (id, n = 10) => h("a", { href: `#/job/${id}`, class: "mono", title: id }, short(id, n));
export const acctLink = (addr, n = 10) =>
  addr ? h("a", { href: `#/account/${addr}`, class: "mono", title: addr }, short(addr, n)) : h("span", { class: "muted" }, "-");

export function badge(text, kind = "") {
  return h("span", { class: `badge ${kind}` }, text);
}

export function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

export function table(headers, rows, numeric = []) {
  return h("table", {},
    h("thead", {}, h("tr", {}, headers.map((x, i) => h("th", { class: numeric.includes(i) ? "num" : null }, x)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c, i) => h("td", { class: numeric.includes(i) ? "num" : null }, c))))));
}

export class ApiError extends Error {}

export async function api(path) {
  const resp = await fetch(path, { headers: { Accept: "application/json" } });
  let body;
  try { body = await resp.json(); } catch { body = { error: `${resp.status} ${resp.statusText}` }; }
  if (!resp.ok) throw new ApiError(body.error || `${resp.status}`);
  return body;
}

// A list read page by page through a cursor endpoint: `render(items)` gives table rows.
export function pagedList(path, key, headers, render, { numeric = [], empty = "none" } = {}) {
  const body = h("tbody");
  const box = h("div", {}, h("table", {},
    h("thead", {}, h("tr", {}, headers.map((x, i) => h("th", { class: numeric.includes(i) ? "num" : null }, x)))), body));
  const more = h("button", { class: "more", type: "button" }, "older");
  let cursor = null;
  async function load() {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(cursor ? `${path}${sep}before=${encodeURIComponent(cursor)}` : path);
    for (const row of render(page[key]))
      body.append(h("tr", {}, row.map((c, i) => h("td", { class: numeric.includes(i) ? "num" : null }, c))));
    cursor = page.next;
    if (!cursor) more.remove();
    if (!body.children.length) box.append(h("p", { class: "muted" }, empty));
    return page;
  }
  more.addEventListener("click", () => load().catch(showError));
  box.append(more);
  return { el: box, load };
}

export function showError(err) {
  const page = document.getElementById("page");
  page.prepend(h("p", { class: "error" }, String(err.message || err)));
}
