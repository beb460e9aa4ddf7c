// Pages: chain, block, tx, account, validators, network. Each returns {el, title, onBlock?}.
import { acctLink, ago, api, badge, blockLink, h, jobLink, kv, num, pagedList, short, table, txLink } from "./dom.js";

function blockRow(b) {
  return [blockLink(b.height), h("span", { class: "mono", title: b.hash }, short(b.hash, 12)), ago(b.time_ms),
    acctLink(b.proposer), num(b.num_txs)];
}

async function chain(_arg, live) {
  const st = await api("/status");
  const blocks = pagedList("/blocks?limit=20", "blocks", ["height", "hash", "time", "proposer", "txs"],
    (items) => items.map(blockRow), { numeric: [4] });
  const first = await blocks.load();
  const times = first.blocks.map((b) => b.time_ms);
  const interval = (ts) => (ts.length > 1 ? (Math.max(...ts) - Math.min(...ts)) / (ts.length - 1) / 1000 : null);
  const heightEl = h("b", { id: "chain-height" }, String(st.height));
  const timeEl = h("b", {}, interval(times) ? `${interval(times).toFixed(2)} s` : "-");
  const el = h("div", {},
    h("div", { class: "stats" },
      h("div", { class: "stat" }, heightEl, h("span", {}, "height")),
      h("div", { class: "stat" }, timeEl, h("span", {}, "block time (recent average)")),
      h("div", { class: "stat" }, h("b", {}, num(st.validators)), h("span", {}, "validators")),
      h("div", { class: "stat" }, h("b", {}, num(st.mempool_size)), h("span", {}, "mempool")),
      h("div", { class: "stat" }, h("b", {}, num(st.jackpot_pool)), h("span", {}, "jackpot pool"))),
    h("section", {}, h("h2", {}, "recent blocks"), blocks.el),
    h("p", { class: "muted" }, `chain ${st.chain_id} · node `, h("span", { id: "moniker" }, st.moniker), " ",
      acctLink(st.node_address)));
  let recent = times;
  const onBlock = (ev) => {
    heightEl.textContent = String(ev.height);
    recent = [ev.time_ms, ...recent].slice(0, 20);
    if (interval(recent)) timeEl.textContent = `${interval(recent).toFixed(2)} s`;
    const tbody = blocks.el.querySelector("tbody");
    tbody.prepend(h("tr", {}, blockRow(ev).map((c, i) => h("td", { class: i === 4 ? "num" : null }, c))));
    while (tbody.children.length > 100) tbody.lastChild.remove();
  };
  return { el, title: "chain", onBlock };
}

function txRow(t) {
  return [txLink(t.hash), badge(t.kind), blockLink(t.height), acctLink(t.sender), num(t.fee)];
}

function jobOf(body) {
  return body && typeof body.job === "string" && /^[0-9a-f]{64}$/.test(body.job) ? body.job : null;
}

async function block(arg) {
  const b = await api(`/block/${encodeURIComponent(arg)}`);
  const rows = b.txs.map((t) => [txLink(t.hash), badge(t.kind), acctLink(t.sender), num(t.fee),
    jobOf(t.body) ? jobLink(t.body.job) : ""]);
  const el = h("div", {},
    h("h1", {}, `block ${b.height}`),
    h("section", {}, kv([
      ["hash", h("span", { class: "mono" }, b.hash)],
      ["time", `${new Date(b.time_ms).toLocaleString()} (${ago(b.time_ms)})`],
      ["proposer", acctLink(b.proposer, 24)],
      ["previous", b.height > 1 ? blockLink(b.height - 1) : "genesis"],
      ["next", h("a", { href: `#/block/${b.height + 1}` }, String(b.height + 1))],
      ["app hash", h("span", { class: "mono" }, b.app_hash)],
      ["evidence", num(b.evidence)],
      ["signatures of its parent", b.last_commit ? `${b.last_commit.signatures} (round ${b.last_commit.round})` : "-"]])),
    h("section", { id: "block-txs" }, h("h2", {}, `${b.num_txs} txs`),
      rows.length ? table(["hash", "kind", "sender", "fee", "job"], rows, [3]) : h("p", { class: "muted" }, "no txs")));
  return { el, title: `block ${b.height}` };
}

async function tx(arg) {
  const t = await api(`/tx/${encodeURIComponent(arg)}`);
  const job = jobOf(t.body);
  const to = t.body && typeof t.body.to === "string" ? t.body.to : null;
  const el = h("div", {},
    h("h1", {}, "tx ", h("span", { class: "mono" }, t.hash)),
    h("section", {}, kv([
      ["status", badge(t.status, t.status === "committed" ? "good" : "")],
      ["kind", badge(t.kind || "-")],
      t.height !== undefined && ["block", h("span", { id: "tx-block" }, blockLink(t.height), ` (tx ${t.index})`)],
      t.sender && ["sender", h("span", { id: "tx-sender" }, acctLink(t.sender, 24))],
      to && ["to", acctLink(to, 24)],
      job && ["job", jobLink(job, 24)],
      ["nonce", num(t.nonce)], ["fee", num(t.fee)]])),
    h("section", {}, h("h2", {}, "body"), h("pre", {}, JSON.stringify(t.body, null, 2))));
  return { el, title: `tx ${short(t.hash, 6)}` };
}

async function account(arg) {
  const [a, ev] = await Promise.all([api(`/account/${encodeURIComponent(arg)}`),
    api(`/account/${encodeURIComponent(arg)}/events?limit=50`)]);
  const txs = pagedList(`/account/${a.address}/txs?limit=20`, "txs", ["hash", "kind", "block", "sender", "fee"],
    (items) => items.map(txRow), { numeric: [4], empty: "no txs" });
  await txs.load();
  const stakes = Object.entries(a.stake).map(([r, v]) => [r, num(v), num(a.locked[r] ?? 0)]);
  const events = ev.events.map((e) => [blockLink(e.height), badge(e.kind, e.kind === "slashed" ? "bad" : ""),
    num(e.amount), e.note, jobLink(e.job)]);
  const jailings = ev.validator.map((j) => [blockLink(j.height), j.reason, num(j.slashed), String(j.jailed_until)]);
  const el = h("div", {},
    h("h1", {}, "account ", h("span", { class: "mono" }, a.address)),
    h("section", {}, kv([
      ["balance", h("b", { id: "balance" }, num(a.balance))], ["nonce", num(a.nonce)],
      ["jailed", a.jailed ? badge(`until ${a.jailed.until}${a.jailed.tombstoned ? ", tombstoned" : ""}`, "bad") : "no"],
      ["open shards", num(a.open_shards)]])),
    h("section", {}, h("h2", {}, "stakes"), table(["role", "bonded", "locked in jobs"], stakes, [1, 2]),
      h("h2", {}, "unbonding"), a.unbonding.length
        ? table(["role", "amount", "released at"], a.unbonding.map((u) => [u.role, num(u.amount), blockLink(u.release_height)]), [1])
        : h("p", { class: "muted" }, "nothing unbonding")),
    h("section", { id: "account-events" }, h("h2", {}, "job payouts and slashes"), events.length
      ? table(["block", "kind", "amount", "note", "job"], events, [2]) : h("p", { class: "muted" }, "none"),
    jailings.length ? [h("h2", {}, "validator slashes"), table(["block", "reason", "slashed", "jailed until"], jailings, [2])] : null),
    h("section", { id: "account-txs" }, h("h2", {}, "recent txs"), txs.el));
  return { el, title: `account ${short(a.address, 6)}` };
}

async function validators() {
  const page = await api("/validators/detail?limit=100");
  const rows = page.validators.map((v) => [acctLink(v.address, 14), num(v.power), num(v.stake),
    `${v.missed} / ${v.window}`,
    v.jailed ? badge(`until ${v.jailed.until}${v.jailed.tombstoned ? ", tombstoned" : ""}`, "bad") : badge("no", "good"),
    v.slashes.length ? v.slashes.map((s) => h("div", { class: "slashed" }, `h${s.height}: ${num(s.slashed)} (${s.reason})`)) : "-"]);
  const el = h("div", {}, h("h1", {}, "validators"),
    h("section", {}, table(["address", "power", "stake", "missed (window)", "jailed", "slashed"], rows, [1, 2]),
      page.next ? h("p", { class: "muted" }, "more validators: /validators/detail?after=…") : null));
  return { el, title: "validators", onBlock: null };
}

async function network() {
  const [peers, st] = await Promise.all([api("/peers"), api("/status")]);
  const rows = peers.peers.map((p) => [acctLink(p.id, 14), h("span", { class: "mono" }, p.listen || "-"),
    p.direction, num(p.height), String(p.score)]);
  const b = st.blob_storage || {};
  const el = h("div", {}, h("h1", {}, "network"),
    h("section", {}, h("h2", {}, "this node"), kv([["moniker", st.moniker], ["address", acctLink(st.node_address, 24)],
      ["blob storage used", `${num(b.bytes)} of ${num(b.limit)} bytes in ${num(b.blobs)} blobs (${num(b.pinned_bytes)} pinned)`]])),
    h("section", { id: "peers" }, h("h2", {}, `${rows.length} peers`),
      table(["id", "listen", "direction", "height", "score"], rows, [3, 4])),
    h("section", {}, h("h2", {}, "banned"), peers.banned.length ? h("ul", {}, peers.banned.map((x) => h("li", {}, acctLink(x, 24))))
      : h("p", { class: "muted" }, "nobody is banned")));
  return { el, title: "network" };
}

async function jobs() {
  const list = pagedList("/jobs/all?limit=20", "jobs", ["job", "status", "round", "shards", "model", "submitter", "submitted", "escrow"],
    (items) => items.map((j) => [jobLink(j.id), badge(j.status, j.status === "done" ? "good" : ""),
      `${Math.min(j.round + 1, j.rounds)} / ${j.rounds}`, num(j.shards), j.model, acctLink(j.submitter),
      blockLink(j.submitted_at), num(j.escrow)]), { numeric: [3, 7], empty: "no jobs yet" });
  await list.load();
  return { el: h("div", {}, h("h1", {}, "jobs"), h("section", { id: "jobs" }, list.el)), title: "jobs" };
}

export const pages = { chain, block, tx, account, validators, network, jobs };
