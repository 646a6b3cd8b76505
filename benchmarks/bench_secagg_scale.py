"""How SecAgg+ scales with the number of clients: the protocol alone, no training.

At each n (default 100, 1,000 and 10,000; 100k parameters; degree and threshold derived from
the default threat model) this measures:

- **per-client time and bytes**, for a few representative clients driven through all six
  stages by the project's own classes (`SecAggClient`, requests built by `SecAggServer`)
  against the full n-client round: every one of the n clients ran setup (fresh keys, signed
  bundle, certified round key), so the sampled list (setup), the committed set (reveal: ids,
  identity fingerprints, seed commitments) and the graph-seed reveals (key sharing) a client
  receives are n entries long, and its neighbours ran the key-sharing stage for real; the
  survivors and signatures (with each signer's round key and certificate) it receives are
  those of its ring segment and neighbours (O(k)). Time is the client's own handler time
  summed over the stages (key sharing includes checking the n graph-seed reveals and finding
  its place in the public ring: a hash and a sort of the n sampled ids); bytes are
  `payload_nbytes` of every request and reply, downloads also by stage;
- **coordinator unmask time** over n survivors: rebuilding each survivor's self-mask seed from
  t Shamir shares, checking it against its commitment and removing its ChaCha20 self-mask from
  the n-client sum, which is the survivors' part of `SecAggServer`'s unmask (no dropouts, so
  no pairwise keys to rebuild). The shares are real shares of the n clients' real seeds.

What is not run for every client: key sharing, masking and signing beyond the representative
clients and their neighbours (the n masked vectors are not materialised). Clients other than
the representatives and their neighbours are treated as having survived every stage.
The public ring every client recomputes at key sharing is computed once for the clients whose
key sharing is not timed (only the representatives', ring included, is timed). The consistency
and unmask requests of the representatives are built here as `SecAggServer` builds them, with
every client a survivor and its neighbours' certified signatures.

    PYTHONPATH=. python benchmarks/bench_secagg_scale.py                 # ~5 min on 2 cores
    PYTHONPATH=. python benchmarks/bench_secagg_scale.py --clients 100 1000 --json out.json
    PYTHONPATH=. python benchmarks/bench_secagg_scale.py --degree 94 --threshold 62

The derived degree itself grows with n (26 at 100 clients, 94 at 10,000 at the defaults: with
only 5 colluders among 100 the hypergeometric tail is cut short). ``--degree`` and
``--threshold`` fix k and t at every n instead (checked against the same privacy bound), which
separates what the protocol adds as n grows (the O(n) setup lists and ring) from what the
threat model asks for (a larger k).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np

from privacy.secagg import SecAggClient, SecAggConfig, SecAggServer, Stage, crypto, messages, shamir
from privacy.secagg import client as client_module
from privacy.secagg.client import share_point
from privacy.secagg.graph import Ring
from privacy.secagg.identity import ephemeral_federation
from privacy.secagg.masking import commit_self_mask, self_mask_key
from privacy.secagg.messages import payload_nbytes

CLIP = 1.0


@contextmanager
def _ring_computed_once():
    """Every client recomputes the same public ring at key sharing; compute it once for those
    whose key sharing is not timed (an O(n log n) hash-and-sort each, n^2 log n over the round)."""
    cache: dict[tuple, Ring] = {}

    def shared(ids, degree, seed):
        key = (tuple(ids), degree, seed)
        if key not in cache:
            cache[key] = Ring(ids, degree, seed)
        return cache[key]

    with mock.patch.object(client_module, "Ring", shared):
        yield


def _timed(cost: dict, stage: str, fn, request):
    # The other simulated clients' objects are not this client's garbage: frozen out of the
    # collector, so that a cycle collection over all n clients is not charged to one handler.
    gc.collect()
    gc.freeze()
    start = time.perf_counter()
    out = fn(request)
    cost["seconds"][stage] = time.perf_counter() - start
    cost["down"] += payload_nbytes(request)
    cost["down_by_stage"][stage] = payload_nbytes(request)
    reply = out[1] if isinstance(out, tuple) else out
    cost["up"] += payload_nbytes(reply)
    return out


def per_client(
    n: int, params: int, representatives: int, degree: int = 0, threshold: int = 0
) -> tuple[SecAggConfig, list[dict]]:
    """Drive ``representatives`` clients through a round of n; return their costs."""
    config = SecAggConfig(num_clients=n, clip=CLIP, degree=degree, threshold=threshold)
    ids = list(range(n))
    server = SecAggServer(config, ids, params)
    setup_requests = server.requests()
    sites = ephemeral_federation(ids)  # each client's certified identity (not timed)
    reps = ids[:: max(1, n // representatives)][:representatives]
    costs = {r: {"seconds": {}, "up": 0, "down": 0, "down_by_stage": {}} for r in reps}
    clients: dict[int, SecAggClient] = {}
    replies = {}
    for r in reps:  # timed: setup
        setup = functools.partial(SecAggClient.setup, site=sites[r])
        clients[r], replies[r] = _timed(costs[r], "setup", setup, setup_requests[r])
    for cid in ids:
        if cid not in clients:
            clients[cid], replies[cid] = SecAggClient.setup(setup_requests[cid], sites[cid])
    server.receive(replies)

    # Reveal: the representatives check the committed set; the others' seeds are just sent.
    reveal_requests = server.requests()
    reveals = {c: {**reveal_requests[c], messages.SEED: clients[c].g_seed} for c in ids}
    for r in reps:
        reveals[r] = _timed(costs[r], "reveal", clients[r].handle, reveal_requests[r])
    server.receive(reveals)

    # Key sharing: the representatives and their neighbours (whose shares they receive), with
    # the graph each recomputes from the reveals computed once for those not timed.
    graph = server._graph  # noqa: SLF001 - whose shares the representatives receive
    sharing = sorted({*reps, *(p for r in reps for p in graph[r])})
    for cid in sharing:
        if cid not in reps:
            clients[cid].handle(reveal_requests[cid])  # untimed: the committed set's digest
    share_requests = {
        cid: {
            messages.STAGE: Stage.SHARE_KEYS.value,
            messages.ROUND: server.round_id,
            **server._share_keys_request(cid),  # noqa: SLF001 - one client's request of n
        }
        for cid in sharing
    }
    share_replies = {
        r: _timed(costs[r], "share_keys", clients[r].handle, share_requests[r]) for r in reps
    }
    with _ring_computed_once():
        for cid in sharing:
            if cid not in reps:
                share_replies[cid] = clients[cid].handle(share_requests[cid])
    server.receive(share_replies)  # clients that did not share keys count as dropped here

    rng = np.random.default_rng(0)
    update = rng.uniform(-CLIP, CLIP, params)
    masked_requests = server.requests()
    for r in reps:
        _timed(
            costs[r],
            "masked_input",
            lambda req, r=r: clients[r].masked_input(req, update, 1),
            masked_requests[r],
        )

    # Consistency and unmask with all n clients surviving: each representative gets the
    # survivors of its ring segment and its neighbours' certified signatures of their
    # neighbourhoods under the committed set's digest.
    for r in reps:
        header = {
            messages.ROUND: server.round_id,
            messages.SURVIVORS: sorted(set(clients[r].segment)),
        }
        request = {messages.STAGE: Stage.CONSISTENCY.value, **header}
        _timed(costs[r], "consistency", clients[r].handle, request)
        peers = clients[r].peer_ids
        request = {
            messages.STAGE: Stage.UNMASK.value,
            **header,
            **server.signers_payload(
                {
                    p: crypto.sign(clients[p].sig_sk, clients[p].consistency_message(ids))
                    for p in peers
                }
            ),
            messages.ALIVE: list(peers),
            messages.DEAD: [],
        }
        _timed(costs[r], "unmask", clients[r].handle, request)
    return config, [costs[r] for r in reps]


def coordinator_unmask(n: int, params: int, config: SecAggConfig) -> float:
    """Seconds to rebuild n self-mask seeds from t shares each and remove n self-masks."""
    round_id = b"\x01" * 16
    t = config.threshold
    work = []
    for cid in range(n):  # not timed: each client's seed, commitment and t of its shares
        seed = crypto.random_seed()
        points = [share_point((cid + j) % n) for j in range(1, t + 1)]
        work.append(
            (cid, commit_self_mask(seed, round_id, cid), points, shamir.split(seed, points, t))
        )
    total = np.zeros(params + 1, dtype=config.dtype)
    start = time.perf_counter()
    for cid, commit, points, shares in work:
        seed = shamir.combine(points, shares, 32)
        assert commit_self_mask(seed, round_id, cid) == commit
        total -= crypto.expand_mask(self_mask_key(seed, round_id, cid), total.size, total.dtype)
    return time.perf_counter() - start


def measure(n: int, params: int, representatives: int, degree: int = 0, threshold: int = 0) -> dict:
    """One row: per-client medians over the representatives, and the coordinator's unmask."""
    config, costs = per_client(n, params, representatives, degree, threshold)
    seconds = [sum(c["seconds"].values()) for c in costs]
    return {
        "n": n,
        "degree": config.degree,
        "threshold": config.threshold,
        "params": params,
        "client_seconds": float(np.median(seconds)),
        "client_seconds_by_stage": {
            s: float(np.median([c["seconds"][s] for c in costs])) for s in costs[0]["seconds"]
        },
        "client_up_bytes": int(np.median([c["up"] for c in costs])),
        "client_down_bytes": int(np.median([c["down"] for c in costs])),
        "client_down_bytes_by_stage": {
            s: int(np.median([c["down_by_stage"][s] for c in costs]))
            for s in costs[0]["down_by_stage"]
        },
        "unmask_seconds": coordinator_unmask(n, params, config),
        "representatives": len(costs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1_000, 10_000])
    parser.add_argument("--params", type=int, default=100_000, help="update size")
    parser.add_argument("--representatives", type=int, default=3, help="clients timed per n")
    parser.add_argument("--degree", type=int, default=0, help="fixed k (0: derived at each n)")
    parser.add_argument("--threshold", type=int, default=0, help="fixed t (0: derived)")
    parser.add_argument("--json", type=Path, help="also write the rows here (run_all.py)")
    args = parser.parse_args()
    rows = []
    graph = (
        f"k = {args.degree}, t = {args.threshold} at every n"
        if args.degree
        else "k and t derived at each n"
    )
    print(f"SecAgg+ alone, {args.params:,} parameters, default threat model ({graph}), no dropouts")
    print(
        f"{'n':>6} {'k':>4} {'t':>4} {'client s':>9} {'up kB':>8} {'down kB':>8} "
        f"{'unmask s':>9}  client s by stage"
    )
    for n in args.clients:
        row = measure(n, args.params, args.representatives, args.degree, args.threshold)
        rows.append(row)
        stages = ", ".join(f"{s} {v:.3f}" for s, v in row["client_seconds_by_stage"].items())
        down = ", ".join(f"{s} {v / 1e3:.1f}" for s, v in row["client_down_bytes_by_stage"].items())
        print(
            f"{n:>6} {row['degree']:>4} {row['threshold']:>4} {row['client_seconds']:>9.3f} "
            f"{row['client_up_bytes'] / 1e3:>8.1f} {row['client_down_bytes'] / 1e3:>8.1f} "
            f"{row['unmask_seconds']:>9.2f}  {stages}; down kB: {down}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
