"""Peers of `eventrail-bench append`: Message DB's `write_message` and Python `eventsourcing`
appending the same small JSON payload, one event per transaction, with N concurrent writers.

Usage: python3 append_peers.py <message-db-url> <eventsourcing-url> <seconds> <writers> [<writers> ...]

<message-db-url> names a database with Message DB installed; <eventsourcing-url> an empty
database (eventsourcing creates its tables). Prints one JSON line per system and writer count:
{"system": ..., "writers": N, "events_per_second": ...}. Installs eventsourcing from PyPI when
it (or psycopg) is missing.
"""

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from urllib.parse import urlparse

try:
    import eventsourcing  # noqa: F401
    import psycopg
except ImportError:
    # eventsourcing's postgres extra brings psycopg (3) as well: a fresh machine has neither.
    print("append_peers: installing eventsourcing[postgres] from PyPI", file=sys.stderr)
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "eventsourcing[postgres]==9.5.6"])
    import psycopg

from eventsourcing.application import Application  # noqa: E402
from eventsourcing.domain import Aggregate, event  # noqa: E402


class Order(Aggregate):
    @event("Happened")
    def happened(self, client, n, sku, qty, note):
        pass


def payload(writer, n):
    return {"client": writer, "n": n, "sku": "tea-earl-grey", "qty": 2, "note": "a small event of typical size"}


def run_writers(writers, seconds, work):
    """Runs `work(writer, deadline) -> events` on `writers` threads; events per second."""
    counts = [0] * writers
    deadline = time.monotonic() + seconds

    def body(i):
        counts[i] = work(i, deadline)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(writers)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - started)


def message_db(url, writers, seconds):
    def work(i, deadline):
        n = 0
        with psycopg.connect(url, autocommit=True) as conn:
            # Message DB's functions call each other unqualified.
            conn.execute("SET search_path = message_store, public")
            stream = f"bench-{uuid.uuid4().hex}"
            while time.monotonic() < deadline:
                conn.execute(
                    "SELECT message_store.write_message(%s, %s, %s, %s)",
                    (str(uuid.uuid4()), stream, "Happened", json.dumps(payload(i, n))),
                )
                n += 1
        return n

    return run_writers(writers, seconds, work)


def python_eventsourcing(url, writers, seconds):
    u = urlparse(url)
    os.environ.update({
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": u.path.lstrip("/"),
        "POSTGRES_HOST": u.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(u.port or 5432),
        "POSTGRES_USER": u.username or "postgres",
        "POSTGRES_PASSWORD": u.password or "",
        "POSTGRES_POOL_SIZE": str(max(writers, 2)),
        "CREATE_TABLE": "y",
    })
    app = Application()

    def work(i, deadline):
        n = 0
        order = Order()
        app.save(order)
        while time.monotonic() < deadline:
            order.happened(**payload(i, n))
            app.save(order)  # one event, one transaction
            n += 1
        return n

    return run_writers(writers, seconds, work)


def main():
    mdb_url, es_url, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    for w in [int(x) for x in sys.argv[4:]]:
        print(json.dumps({"system": "Message DB write_message", "writers": w,
                          "events_per_second": message_db(mdb_url, w, seconds)}), flush=True)
        print(json.dumps({"system": "Python eventsourcing 9.5.6", "writers": w,
                          "events_per_second": python_eventsourcing(es_url, w, seconds)}), flush=True)


if __name__ == "__main__":
    main()
