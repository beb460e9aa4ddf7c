"""Mempool admission cost against a sender's backlog, with ed25519 verification as the baseline.

A flooding sender keeps many txs pending; admission must not get slower for it (it used to sum
every pending tx's cost, re-checking each pending job spec, on every new tx). For backlogs of
1 to 1,000 pending txs, this times admitting one more transfer, and one more job submission,
into the real Mempool over a real genesis state, and in the same run times a bare ed25519
verify (the one cost admission cannot avoid). Several repetitions; prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consensus.crypto import PrivateKey, verify  # noqa: E402
from node.mempool import Mempool  # noqa: E402
from tests.chainfactory import CHAIN_ID, VAL, Chain, job_spec, make_tx  # noqa: E402


def verify_us(key: PrivateKey, n: int = 2000) -> float:
    msg = b"x" * 200
    sig = key.sign(msg)
    start = time.perf_counter()
    for _ in range(n):
        verify(key.pubkey, msg, sig)
    return (time.perf_counter() - start) / n * 1e6


def admission_us(backlog: int, kind: str, probes: int) -> float:
    """Median µs to admit one more tx of `kind` from a sender with `backlog` pending job submissions."""
    sender = PrivateKey.generate()
    state = Chain.create(accounts=((VAL, 1_000), (sender, 10**15))).view()
    pool = Mempool(CHAIN_ID, max_per_sender=backlog + probes + 1)
    for n in range(backlog):
        pool.add(make_tx(sender, "submit_job", {"spec": job_spec(seed=n)}, n), state)
    body = {"spec": job_spec(seed=10**6)} if kind == "submit_job" else {"to": VAL.address, "amount": 1}
    txs = [make_tx(sender, kind, dict(body), backlog + i) for i in range(probes)]
    times = []
    for tx in txs:
        start = time.perf_counter()
        pool.add(tx, state)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backlogs", default="1,10,100,1000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--probes", type=int, default=200)
    args = ap.parse_args()
    backlogs = [int(b) for b in args.backlogs.split(",")]
    key = PrivateKey.generate()
    out: dict = {"benchmark": "mempool_admission", "repeats": args.repeats, "unit": "microseconds per tx",
                 "ed25519_verify_us": [], "transfer": {}, "submit_job": {}}
    for _ in range(args.repeats):
        out["ed25519_verify_us"].append(round(verify_us(key), 1))
        for kind in ("transfer", "submit_job"):
            for b in backlogs:
                out[kind].setdefault(str(b), []).append(round(admission_us(b, kind, args.probes), 1))
    for kind in ("transfer", "submit_job"):
        med = {b: statistics.median(v) for b, v in out[kind].items()}
        out[f"{kind}_median_us"] = med
        out[f"{kind}_growth_{backlogs[0]}_to_{backlogs[-1]}"] = round(med[str(backlogs[-1])] / med[str(backlogs[0])], 2)
    v = statistics.median(out["ed25519_verify_us"])
    out["transfer_over_verify"] = round(out["transfer_median_us"][str(backlogs[-1])] / v, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
