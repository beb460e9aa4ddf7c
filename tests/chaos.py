"""Chaos scenarios on an impaired network, shared by tests/test_network_chaos.py (short runs
that assert) and benchmarks/network_chaos.py (measured runs that report).

Each scenario runs on a fresh ChaosNet (tests/chaosnet.py): by default 4 validators on
100 Mbit/s links with 50 ± 10 ms one-way delay and 1% loss, under transfer load, while its
script partitions and heals, kills and restarts, or skews a clock. Afterwards the nodes are
stopped and their stores checked (tests/safety.py); ``report`` turns what the load generator
and the height monitor saw into finality, throughput and recovery numbers.

Recovery of an event at time t, with H the highest height any node had at t: ``first_block_s``
is when some node first reported H+1, ``recover_s`` when every node expected to follow
(all after a heal or restart, the survivors after a kill, a 2/3 side after a partition) had.
"""
from __future__ import annotations

import math
import os
import random
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from node.home import Home
from tests.netlab import LinkSpec
from tests.chaosnet import ChaosNet, LoadPlan, NetConfig
from tests.safety import SafetyReport, check_safety


@dataclass(frozen=True)
class Timing:
    warmup_s: float = 5.0
    run_s: float = 30.0  # steady and clock scenarios
    hold_s: float = 10.0  # how long a partition lasts
    after_s: float = 10.0  # load after a recovery
    kills: int = 3
    down_s: float = 5.0  # how long a killed validator stays down
    recover_timeout_s: float = 60.0
    drain_s: float = 60.0


FULL = Timing()
SHORT = Timing(warmup_s=3, run_s=10, hold_s=5, after_s=4, kills=2, down_s=3, recover_timeout_s=30, drain_s=30)
SLOWEST = 3  # blocks listed with their gap, round and proposer, to see where time went
RECOVERY_ALLOWANCE_S = 15.0  # load presigned for a recovery this long; it may take longer


@dataclass(frozen=True)
class Scenario:
    name: str
    script: Callable[[ChaosNet, Timing, random.Random], None]
    load_s: Callable[[Timing], float]
    clock_offsets_ms: tuple[tuple[int, int], ...] = ()
    about: str = ""
    link: LinkSpec | None = None  # instead of the network's (a baseline without impairment)


def _steady(net: ChaosNet, t: Timing, rng: random.Random) -> None:
    time.sleep(t.run_s)


def minority(n: int, rng: random.Random) -> list[list[int]]:
    lone = rng.randrange(n)
    return [[lone], [i for i in range(n) if i != lone]]


def halves(n: int, rng: random.Random) -> list[list[int]]:
    order = list(range(n))
    rng.shuffle(order)
    return [sorted(order[:n // 2]), sorted(order[n // 2:])]


def _partition_script(groups: Callable, mode: str):
    def script(net: ChaosNet, t: Timing, rng: random.Random) -> None:
        time.sleep(t.warmup_s)
        net.partition(groups(len(net.nodes), rng), mode)
        time.sleep(t.hold_s)
        net.heal()
        net.wait_progress(t.recover_timeout_s, list(range(len(net.nodes))))
        time.sleep(t.after_s)
    return script


def _kills(net: ChaosNet, t: Timing, rng: random.Random) -> None:
    time.sleep(t.warmup_s)
    for _ in range(t.kills):
        victim = rng.randrange(len(net.nodes))
        net.kill(victim)
        time.sleep(t.down_s)
        net.restart(victim)
        net.wait_progress(t.recover_timeout_s, list(range(len(net.nodes))))
        time.sleep(t.after_s / 2)


def _partition_load(t: Timing) -> float:
    return t.warmup_s + t.hold_s + RECOVERY_ALLOWANCE_S + t.after_s


SCENARIOS = {s.name: s for s in [
    Scenario("steady", _steady, lambda t: t.run_s, about="impaired links under load, no faults"),
    Scenario("steady_unimpaired", _steady, lambda t: t.run_s, link=LinkSpec(rate_mbit=100),
             about="baseline: the same lab and load, 100 Mbit/s links without delay or loss"),
    Scenario("minority_partition", _partition_script(minority, "blackhole"), _partition_load,
             about="1 of 4 cut off (links dark, connections kept), then healed"),
    Scenario("majority_partition", _partition_script(halves, "blackhole"), _partition_load,
             about="2|2: no side has 2/3 (links dark, connections kept), then healed"),
    Scenario("minority_partition_cut", _partition_script(minority, "cut"), _partition_load,
             about="1 of 4 cut off (connections reset and refused), then healed"),
    Scenario("majority_partition_cut", _partition_script(halves, "cut"), _partition_load,
             about="2|2 (connections reset and refused), then healed"),
    Scenario("kill9_restart", _kills,
             lambda t: t.warmup_s + t.kills * (t.down_s + RECOVERY_ALLOWANCE_S + t.after_s / 2),
             about="kill -9 of a random validator, restarted after down_s; one at a time"),
    Scenario("clock_ahead_5s", _steady, lambda t: t.run_s, clock_offsets_ms=((3, 5000),),
             about="validator 3's clock runs 5 s ahead"),
    Scenario("clock_behind_5s", _steady, lambda t: t.run_s, clock_offsets_ms=((3, -5000),),
             about="validator 3's clock runs 5 s behind"),
]}


def run_scenario(base: Path, scenario: Scenario, cfg: NetConfig = NetConfig(), timing: Timing = FULL,
                 rate: int = 500, seed: int = 1) -> dict:
    """One scenario on a fresh network: its report, safety verdict included."""
    rng = random.Random(seed)
    cfg = replace(cfg, clock_offsets_ms=scenario.clock_offsets_ms, seed=seed, link=scenario.link or cfg.link)
    with ChaosNet(base, cfg, LoadPlan(rate, scenario.load_s(timing))) as net:
        net.start_load()
        scenario.script(net, timing, rng)
        return {"scenario": scenario.name, "about": scenario.about, **finish(net, timing.drain_s)}


def finish(net: ChaosNet, drain_s: float) -> dict:
    """End the load, let the mempools drain, stop the nodes, check their stores: the report."""
    net.stop_load()
    busy = net.busy_under_load()
    drained = net.drain(drain_s)
    proxy, link, cpu = net.lab.stats(), net.lab.describe(), net.cpu()
    cpu.update(machine_busy_under_load_pct=busy, cores=os.cpu_count())
    codes = net.stop_nodes()
    safety = check_safety([n.home for n in net.nodes], net.chain_id)
    return {"link": link, "offered_tx_per_s": net.plan.rate, "block_interval_ms": net.cfg.block_interval_ms,
            **report(net, safety), "drained": drained, "exit_codes": codes, "proxy": proxy, "cpu": cpu}


# -- measuring ------------------------------------------------------------------------------

def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def report(net: ChaosNet, safety: SafetyReport) -> dict:
    load, mon, chain = net.load, net.monitor, safety.canonical()
    lat, last = [], None
    for tx_hash, t in load.submitted.items():
        height = chain.tx_height.get(tx_hash)
        seen = mon.first_seen(height) if height is not None else None
        if seen is not None:
            lat.append(seen - t)
            last = seen if last is None else max(last, seen)
    lat.sort()
    span = (last - load.started_at) if last else None
    out = {"load_s": _r(load.ended_at - load.started_at, 1), "txs_submitted": len(load.submitted),
           "txs_rejected": load.rejected, "txs_unsent": load.unsent, "txs_finalized": len(lat),
           "txs_unfinalized": len(load.submitted) - len(lat),
           "finalized_tx_per_s": _r(len(lat) / span, 1) if span else 0.0,
           "p50_finality_s": _r(percentile(lat, 0.5)), "p99_finality_s": _r(percentile(lat, 0.99)),
           "max_finality_s": _r(lat[-1] if lat else None),
           "recoveries": [recovery(net, ev) for ev in net.events],
           "blocks": block_stats(net, safety), "safety_violations": safety.count, "safety": safety.summary()}
    if load.errors:
        out["submit_errors"] = load.errors[:5]
    return out


def recovery(net: ChaosNet, ev: dict) -> dict:
    mon, n, t = net.monitor, len(net.nodes), ev["t"]
    top = max(mon.height_at(i, t) for i in range(n))
    first, done = mon.first_seen(top + 1), mon.all_reached(top + 1, ev["expect"])
    out = {k: v for k, v in ev.items() if k not in ("t", "expect")}
    out.update(at_s=_r(t - net.t0, 2), height=top, first_block_s=_r(first - t if first else None))
    if ev["expect"]:
        out["recover_s"] = _r(done - t if done else None)
    if ev["event"] == "partition":
        end = next((e["t"] for e in net.events if e["event"] == "heal" and e["t"] > t), time.monotonic())
        h = top + 1
        while (s := mon.first_seen(h)) is not None and s < end:
            h += 1
        out["blocks_during"] = h - top - 1
    return out


def block_stats(net: ChaosNet, safety: SafetyReport) -> dict:
    """Rounds, gaps and proposers of the blocks made under load; how far block time ran ahead."""
    chain, mon = safety.canonical(), net.monitor
    addrs = [Home(n.home).node_key().address for n in net.nodes]
    start, end = net.load.started_at, net.load.ended_at
    seen = {h: mon.first_seen(h) for h in range(1, chain.tip + 1)}
    window = [h for h, s in seen.items() if s is not None and start <= s <= end]
    gap = {h: seen[h] - seen[h - 1] for h in window if seen.get(h - 1) is not None}
    gaps = sorted(gap.values())
    rounds = [chain.blocks[h - 1].round for h in window]
    leads = [chain.blocks[h - 1].time_ms / 1000 - (net.wall0 + seen[h] - net.t0) for h in window]
    index = {a: i for i, a in enumerate(addrs)}
    proposers = [index.get(chain.blocks[h - 1].proposer, -1) for h in window]
    slowest = sorted(gap, key=gap.get, reverse=True)[:SLOWEST]
    return {"tip": chain.tip, "under_load": len(window), "later_rounds": sum(r > 0 for r in rounds),
            "max_round": max(rounds, default=0), "gap_p50_s": _r(percentile(gaps, 0.5)),
            "gap_max_s": _r(gaps[-1] if gaps else None),
            "proposed_by": {f"node{i}": proposers.count(i) for i in range(len(addrs))},
            "block_time_lead_p50_s": _r(statistics.median(leads) if leads else None, 2),
            "block_time_lead_max_s": _r(max(leads) if leads else None, 2),
            "slowest": [{"height": h, "gap_s": _r(gap[h]), "round": chain.blocks[h - 1].round,
                         "proposer": f"node{index.get(chain.blocks[h - 1].proposer, -1)}",
                         "txs": chain.blocks[h - 1].txs, "at_s": _r(seen[h] - net.t0, 2)} for h in slowest]}
