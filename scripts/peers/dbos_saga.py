"""DBOS Transact running the saga benchmark's workflow, for `eventrail-bench saga`.

Usage: python3 dbos_saga.py <postgres-url of an empty database> <workflows> <workers>

A workflow of three no-op steps, like the benchmark's saga. The main process enqueues
<workflows> workflows on a queue as fast as one client can; <workers> worker processes run
them. Prints one JSON line: throughput from the first enqueue to the last completion, and the
p50/p99 of each workflow's time from creation to completion (DBOS's own timestamps).
Installs DBOS from PyPI when it is missing.
"""

import json
import multiprocessing as mp
import subprocess
import sys
import time

try:
    from dbos import DBOS
except ImportError:
    print("dbos_saga: installing dbos from PyPI", file=sys.stderr)
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "dbos"])
    from dbos import DBOS

QUEUE = "bench"


def register():
    return DBOS.register_queue(QUEUE, worker_concurrency=16, polling_interval_sec=0.01)


@DBOS.step()
def step_a(i):
    return i


@DBOS.step()
def step_b(i):
    return i


@DBOS.step()
def step_c(i):
    return i


@DBOS.workflow()
def order(i):
    step_a(i)
    step_b(i)
    step_c(i)
    return i


def config(url):
    return {"name": "eventrail-bench", "system_database_url": url, "log_level": "WARNING"}


def worker(url, ready, stop):
    DBOS(config=config(url))
    DBOS.launch()
    register()
    ready.set()
    stop.wait()
    DBOS.destroy()


def main():
    url, n, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    # Create the system tables once, before the workers start.
    DBOS(config=config(url))
    DBOS.listen_queues([])  # the main process only enqueues
    DBOS.launch()
    queue = register()
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    procs = []
    for _ in range(workers):
        ready = ctx.Event()
        p = ctx.Process(target=worker, args=(url, ready, stop))
        p.start()
        ready.wait(120)
        procs.append(p)
    t0 = time.time()
    handles = [queue.enqueue(order, i) for i in range(n)]
    for h in handles:
        h.get_result()
    seconds = time.time() - t0
    stop.set()
    for p in procs:
        p.join(30)
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT updated_at - created_at FROM dbos.workflow_status WHERE name LIKE '%order' AND status = 'SUCCESS' ORDER BY 1"
        ).fetchall()
    lat = [r[0] for r in rows]
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None
    print(json.dumps({"workers": workers, "workflows": n, "completed": len(lat), "seconds": seconds,
                      "per_second": n / seconds, "p50_ms": pct(0.5), "p99_ms": pct(0.99)}))
    DBOS.destroy()


if __name__ == "__main__":
    main()
