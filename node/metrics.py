"""The node's Prometheus metrics, through prometheus_client (one registry per node).

Timings here are local observations (wall clock, for dashboards); nothing in them reaches
chain state. Counters are fed where things happen: the engine's commits, mempool admission,
blob transfers; gauges are read from the chain when /metrics is scraped, so they are never
stale. Metric names keep the `stepchain_` prefix of the hand-written set they replace.
"""
from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from consensus.jobs import Job, JobStatus, k_job
from consensus.types import Block

SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
ADMISSION = (25e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 5e-3, 0.02, 0.1)
MAX_TRACKED_TXS = 100_000  # submit times remembered for the finality histogram (oldest dropped)
TX_RESULTS = ("accepted", "invalid", "rejected", "committed")


class NodeMetrics:
    """What a node counts and times; `render` is the /metrics body."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.block_interval = Histogram("stepchain_block_interval_seconds", "time between two committed blocks",
                                        buckets=SECONDS, registry=r)
        self.proposal_to_commit = Histogram("stepchain_proposal_to_commit_seconds",
                                            "from this node first seeing a block's proposal to committing it",
                                            buckets=SECONDS, registry=r)
        self.submit_to_finality = Histogram("stepchain_submit_to_finality_seconds",
                                            "from a tx's admission to this node's mempool to its block's commit",
                                            buckets=SECONDS, registry=r)
        self.admission = Histogram("stepchain_mempool_admission_seconds", "time to check and admit one tx",
                                   buckets=ADMISSION, registry=r)
        self.txs = Counter("stepchain_txs", "txs by kind and result (accepted, invalid, rejected: admission; "
                           "committed: in a block)", ["kind", "result"], registry=r)
        self.committed_txs = Counter("stepchain_committed_txs", "txs in committed blocks", registry=r)
        self.job_events = Counter("stepchain_job_events", "job events by kind, as blocks commit them",
                                  ["kind"], registry=r)
        self.verifications = Counter("stepchain_verifications", "verifier outcomes committed: attested or challenged",
                                     ["outcome"], registry=r)
        self.disputes = Counter("stepchain_disputes", "challenges opened", registry=r)
        self.slashes = Counter("stepchain_slashes", "slashes in job events", registry=r)
        self.blob_bytes = Counter("stepchain_blob_transfer_bytes", "blob bytes in and out (RPC and P2P)",
                                  ["direction"], registry=r)
        self.gauges = {name: Gauge(f"stepchain_{name}", doc, registry=r) for name, doc in (
            ("height", "committed height"), ("mempool_size", "txs waiting"), ("validators", "active validators"),
            ("peers", "connected peers"), ("blob_bytes", "bytes in the blob directory"),
            ("blob_count", "blobs stored"), ("blob_pinned_bytes", "bytes pinned by jobs"),
            ("blob_limit_bytes", "the blob directory's bound (0: none)"))}
        self.jobs = Gauge("stepchain_jobs", "jobs by status (active, done, cancelled, diverged)", ["status"],
                          registry=r)
        self.job_status: dict[bytes, str] = {}  # every job's status, kept from the blocks that write them
        self._last_commit: float | None = None
        self._proposed: dict[int, float] = {}  # height -> when its first proposal was seen
        self._submitted: dict[bytes, float] = {}  # tx hash -> when it was admitted here

    # -- events ----------------------------------------------------------------------------

    def proposal_seen(self, height: int) -> None:
        self._proposed.setdefault(height, time.monotonic())
        if len(self._proposed) > 64:
            for h in sorted(self._proposed)[:-64]:
                del self._proposed[h]

    def admitted(self, kind: str, tx_hash: bytes, seconds: float) -> None:
        self.admission.observe(seconds)
        self.txs.labels(kind, "accepted").inc()
        self._submitted[tx_hash] = time.monotonic()
        if len(self._submitted) > MAX_TRACKED_TXS:
            del self._submitted[next(iter(self._submitted))]

    def refused(self, kind: str, result: str) -> None:
        self.txs.labels(kind, result).inc()

    def committed(self, block: Block, writes: dict | None = None) -> None:
        now = time.monotonic()
        if self._last_commit is not None:
            self.block_interval.observe(now - self._last_commit)
        self._last_commit = now
        seen = self._proposed.pop(block.height, None)
        if seen is not None:
            self.proposal_to_commit.observe(now - seen)
        self.committed_txs.inc(len(block.txs))
        for tx in block.txs:
            self.txs.labels(tx.kind, "committed").inc()
            if tx.kind in ("attest", "challenge"):
                self.verifications.labels("attested" if tx.kind == "attest" else "challenged").inc()
            if tx.kind == "challenge":
                self.disputes.inc()
            submitted = self._submitted.pop(tx.hash, None)
            if submitted is not None:
                self.submit_to_finality.observe(now - submitted)
        self._count_job_events(block.height, writes or {})

    def _count_job_events(self, height: int, writes: dict) -> None:
        """The events this block appended to the jobs it wrote."""
        for key in sorted(writes):
            raw = writes[key]
            if raw is None or not _is_job_key(key):
                continue
            try:
                job = Job.from_map(_decode(raw))
            except (ValueError, TypeError, KeyError):
                continue
            self.job_status[job.id] = job.status.value
            for event in job.events:
                if event[0] == height:
                    self.job_events.labels(event[1]).inc()
                    if event[1] == "slashed":
                        self.slashes.inc()

    def blob_in(self, n: int) -> None:
        self.blob_bytes.labels("in").inc(n)

    def blob_out(self, n: int) -> None:
        self.blob_bytes.labels("out").inc(n)

    # -- scraping --------------------------------------------------------------------------

    def census(self, view, job_ids) -> None:
        """Every job's status at start-up (the explorer's index lists them all); blocks keep it."""
        for job_id in job_ids:
            raw = view.read(k_job(job_id))
            if isinstance(raw, dict) and isinstance(raw.get("status"), str):
                self.job_status[job_id] = raw["status"]

    def render(self, values: dict[str, int]) -> tuple[bytes, str]:
        """The exposition text with the gauges set to `values` now; (body, content type)."""
        for name, value in values.items():
            self.gauges[name].set(value)
        counts = {status.value: 0 for status in JobStatus}
        for status in self.job_status.values():
            counts[status] = counts.get(status, 0) + 1
        for status, count in sorted(counts.items()):
            self.jobs.labels(status).set(count)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def admit(chain, metrics: NodeMetrics | None, tx) -> None:
    """chain.mempool.add, timed and counted (InvalidTx / Rejected propagate, counted)."""
    from .mempool import InvalidTx, Rejected
    started = time.perf_counter()
    try:
        chain.mempool.add(tx, chain.view())
    except InvalidTx:
        if metrics is not None:
            metrics.refused(tx.kind, "invalid")
        raise
    except Rejected:
        if metrics is not None:
            metrics.refused(tx.kind, "rejected")
        raise
    if metrics is not None:
        metrics.admitted(tx.kind, tx.hash, time.perf_counter() - started)


_JOB_PREFIX = k_job(b"\x00" * 32)[:-32]


def _is_job_key(key: bytes) -> bool:
    return key.startswith(_JOB_PREFIX) and len(key) == len(_JOB_PREFIX) + 32


def _decode(raw):
    from consensus import codec
    return codec.decode(raw, max_size=1 << 26) if isinstance(raw, (bytes, bytearray)) else raw
