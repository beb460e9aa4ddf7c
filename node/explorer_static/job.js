// The job page: rounds and shards with their solvers and verifiers, each shard's status and
// timeline, loss curves with their verified points (uPlot), disputes and their outcome,
// payouts and slashes, and the final model's hash and metric.
import { acctLink, api, badge, blockLink, h, kv, num, pagedList, short, table } from "./dom.js";

const COLORS = ["#2463eb", "#d97706", "#059669", "#9333ea", "#dc2626", "#0891b2", "#4b5563", "#db2777"];
const SLASH_KINDS = new Set(["slashed", "slash"]);
const PAY_KINDS = new Set(["paid", "rewarded", "jackpot", "refund", "refunded"]);
const DISPUTE_KINDS = new Set(["challenge", "midpoint", "answer", "vote", "dispute", "forced", "referee", "fraud"]);
const safe = (s) => String(s).replace(/[^a-zA-Z0-9 .,:#()_-]/g, "");  // chart labels: plain words only

function statusBadge(s) {
  return badge(s, ["passed", "done"].includes(s) ? "good" : ["disputed", "diverged", "cancelled"].includes(s) ? "bad" : "");
}

function shardTimeline(s) {
  const marks = [["assigned", s.assigned_at], ["committed", s.commit && s.commit.height], ["window ends", s.window_end],
    ["revealed", s.revealed_at], ["deadline", s.deadline]];
  return h("div", { class: "timeline" }, marks.filter(([, v]) => v).map(([k, v]) => h("span", {}, `${k} `, blockLink(v))));
}

function verifiersOf(s) {
  if (!s.verifiers.length) return h("span", { class: "muted" }, "not drawn yet");
  return s.verifiers.map((v) => h("div", {}, acctLink(v.verifier), " ",
    v.attested ? badge(`attested h${v.attested_at}`, "good") : badge("no attestation"),
    v.intervals.length ? h("span", { class: "muted" }, ` intervals ${v.intervals.join(", ")}`) : null));
}

function challengesOf(s) {
  if (!s.challenges.length) return "-";
  return s.challenges.map((c) => h("div", {}, badge(c.kind), " by ", acctLink(c.challenger), ` on interval ${c.interval}, opened `,
    blockLink(c.opened), c.game ? ` · game [${c.game.lo}, ${c.game.hi}] after ${c.game.moves} moves` : "",
    c.votes.length ? ` · ${c.votes.length} votes` : ""));
}

function shardsSection(job) {
  const rows = job.shards.map((s, i) => [String(i), acctLink(s.solver), statusBadge(s.status), shardTimeline(s),
    verifiersOf(s), challengesOf(s), s.forced >= 0 ? `interval ${s.forced}` : "-"]);
  return h("section", { id: "job-shards" }, h("h2", {}, `round ${job.round + 1} of ${job.spec.rounds}: shards`),
    table(["shard", "solver", "status", "timeline", "verifiers", "challenges", "forced error"], rows));
}

function eventRows(events, keep) {
  return events.filter((e) => keep(e[1])).map(([hgt, kind, who, amount, note]) =>
    [blockLink(hgt), badge(kind, SLASH_KINDS.has(kind) ? "bad" : PAY_KINDS.has(kind) ? "good" : ""), acctLink(who), num(amount), note]);
}

function moneySection(job) {
  const slashes = eventRows(job.events, (k) => SLASH_KINDS.has(k));
  const paid = new Map();
  for (const [, kind, who, amount] of job.events) if (PAY_KINDS.has(kind)) paid.set(who, (paid.get(who) || 0) + amount);
  return h("section", { id: "job-money" },
    h("h2", {}, "slashes"), slashes.length
      ? h("div", { id: "job-slashes" }, table(["block", "kind", "who", "amount", "reason"], slashes, [3]))
      : h("p", { class: "muted" }, "nobody slashed"),
    h("h2", {}, "payouts"), paid.size
      ? table(["who", "total paid"], [...paid].map(([w, a]) => [acctLink(w, 14), num(a)]), [1])
      : h("p", { class: "muted" }, "nothing paid yet"));
}

function finalSection(job) {
  const rounds = job.rounds || [];
  const last = rounds.length ? rounds[rounds.length - 1] : null;
  const finals = last ? last.finals || [] : (job.finals || []).flat();
  const metric = (ppm) => (ppm === null || ppm === undefined
    ? `${job.spec.metric || "metric"}: computed off chain by \`stepchain job fetch\``
    : `${(ppm / 1e6).toFixed(6)} (${job.spec.metric || "metric"})`);
  const model = last && last.model ? last.model
    : finals.length ? `average of ${finals.map((f) => short(String(f), 8)).join(" + ")}` : "not trained yet";
  return h("section", { id: "job-final" }, h("h2", {}, "model"), kv([
    ["final model", h("span", { class: "mono", id: "final-model" }, model)],
    ["metric", h("span", { id: "final-metric" }, metric(last && last.metric_ppm))]]),
  rounds.length ? table(["round", "finals (one per shard)", "model it made"], rounds.map((r) => [String(r.round + 1),
    h("span", { class: "mono" }, (r.finals || []).map((f) => short(f, 8)).join(", ")),
    h("span", { class: "mono" }, r.model ? short(r.model, 12) : "-")])) : null);
}

// The job's step: rounds follow each other (a round restarts its own step count at 0).
const jobStep = (c, p) => Number(c.round) * c.points.length * Number(c.k) + Number(p.step);

// A line per shard; each shard's verified points again as filled markers, in the same colour.
export function curveChart(curves, width = 900) {
  const steps = [...new Set(curves.flatMap((c) => c.points.map((p) => jobStep(c, p))))].sort((a, b) => a - b);
  const at = new Map(steps.map((s, i) => [s, i]));
  const data = [steps];
  const series = [{ label: "step" }];
  curves.forEach((c, i) => {
    const all = new Array(steps.length).fill(null);
    const verified = new Array(steps.length).fill(null);
    for (const p of c.points) {
      const v = typeof p.loss === "number" && Number.isFinite(p.loss) ? p.loss : null;
      all[at.get(jobStep(c, p))] = v;
      if (p.verified) verified[at.get(jobStep(c, p))] = v;
    }
    const color = COLORS[i % COLORS.length];
    const name = `round ${Number(c.round) + 1} shard ${Number(c.shard)} (${safe(short(c.solver, 6))})`;
    data.push(all, verified);
    series.push({ label: name, stroke: color, width: 1.5, spanGaps: true, points: { show: false } },
      { label: `${name} verified`, stroke: color, width: 0, spanGaps: false,
        points: { show: true, size: 8, fill: color, stroke: color } });
  });
  const opts = { width, height: 320, series, scales: { x: { time: false } },
    axes: [{ label: "step (rounds one after another)" }, { label: "loss (mean per interval)" }], legend: { live: false } };
  const box = h("div", { class: "chart", id: "loss-chart" });
  // eslint-disable-next-line no-undef
  box.plot = new uPlot(opts, data, box);
  return box;
}

function curvesSection(job) {
  const curves = (job.curves || []).filter((c) => c.points && c.points.length);
  const verified = curves.reduce((n, c) => n + c.points.filter((p) => p.verified).length, 0);
  return h("section", { id: "job-curves" }, h("h2", {}, "loss curves"),
    curves.length ? [h("p", { class: "muted", id: "curve-summary" },
      `${curves.length} shard curves, ${verified} verified points (filled markers)`), curveChart(curves)]
      : h("p", { class: "muted" }, "no loss curve yet: a shard's curve appears once it is committed"));
}

function render(job) {
  const s = job.spec;
  const disputes = eventRows(job.events, (k) => DISPUTE_KINDS.has(k) || SLASH_KINDS.has(k));
  const txs = pagedList(`/job/${job.id}/txs?limit=20`, "txs", ["hash", "kind", "block", "sender"],
    (items) => items.map((t) => [h("a", { href: `#/tx/${t.hash}`, class: "mono" }, short(t.hash)), badge(t.kind),
      blockLink(t.height), acctLink(t.sender)]), { empty: "no txs" });
  txs.load().catch(() => {});
  return h("div", {},
    h("h1", {}, "job ", h("span", { class: "mono" }, job.id), " ", statusBadge(job.status)),
    h("section", {}, kv([
      ["submitter", acctLink(job.submitter, 24)], ["submitted", blockLink(job.submitted_at)],
      ["round", `${Math.min(job.round + 1, s.rounds)} of ${s.rounds}`], ["shards", num(s.shards)],
      ["model", String(s.model)], ["escrow left", num(job.escrow)], ["jackpots left", num(job.jackpots_left)]])),
    finalSection(job), curvesSection(job), shardsSection(job), moneySection(job),
    h("section", { id: "job-disputes" }, h("h2", {}, "disputes and their outcome"), disputes.length
      ? table(["block", "kind", "who", "amount", "note"], disputes, [3]) : h("p", { class: "muted" }, "no disputes")),
    h("section", { id: "job-events" }, h("h2", {}, `events (${job.events.length})`),
      table(["block", "kind", "who", "amount", "note"], eventRows(job.events, () => true), [3])),
    h("section", { id: "job-txs" }, h("h2", {}, "txs"), txs.el),
    h("section", {}, h("h2", {}, "spec"), h("pre", {}, JSON.stringify(s, null, 2))));
}

async function loadJob(id) {  // the record, and its loss curves (kept apart from it by the RPC)
  const [job, curves] = await Promise.all([api(`/job/${encodeURIComponent(id)}`),
    api(`/job/${encodeURIComponent(id)}/curves`)]);
  job.curves = curves.curves;
  job.rounds = curves.rounds;
  return job;
}

export async function jobPage(arg) {
  let job = await loadJob(arg);
  const el = h("div", { id: "job" }, render(job));
  let busy = false;
  const onBlock = async () => {  // live: re-drawn when the job changed in a block
    if (busy || job.status !== "active") return;
    busy = true;
    try {
      const next = await loadJob(job.id);
      if (next.events.length !== job.events.length || next.status !== job.status ||
          JSON.stringify(next.events.at(-1)) !== JSON.stringify(job.events.at(-1)) ||
          JSON.stringify(next.curves || []) !== JSON.stringify(job.curves || [])) {
        job = next;
        el.replaceChildren(render(job));
      }
    } finally { busy = false; }
  };
  return { el, title: `job ${short(job.id, 6)}`, onBlock };
}
