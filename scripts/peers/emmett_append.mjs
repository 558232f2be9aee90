// Peer of `eventrail-bench append`: Emmett 0.42 (`@event-driven-io/emmett-postgresql`) appending
// the same small JSON payload, one event per append, with N concurrent writers.
//
// Usage: node emmett_append.mjs <postgres-url of an empty database> <seconds> <writers> [...]
// Run from a folder where the package is installed (scripts/peers/emmett.sh does both).
// Prints one JSON line per writer count.
import { getPostgreSQLEventStore } from '@event-driven-io/emmett-postgresql';
import { randomUUID } from 'node:crypto';

const [url, seconds, ...writerCounts] = process.argv.slice(2);
const store = getPostgreSQLEventStore(url);

const payload = (client, n) => ({ client, n, sku: 'tea-earl-grey', qty: 2, note: 'a small event of typical size' });

// Creates the schema before the clock starts.
await store.appendToStream(`warmup-${randomUUID()}`, [{ type: 'Happened', data: payload(0, 0) }]);

for (const w of writerCounts.map(Number)) {
  const deadline = Date.now() + Number(seconds) * 1000;
  const started = Date.now();
  const writers = Array.from({ length: w }, async (_, i) => {
    const stream = `bench-${randomUUID()}`;
    let n = 0;
    while (Date.now() < deadline) {
      await store.appendToStream(stream, [{ type: 'Happened', data: payload(i, n) }]);
      n += 1;
    }
    return n;
  });
  const total = (await Promise.all(writers)).reduce((a, b) => a + b, 0);
  const perSecond = total / ((Date.now() - started) / 1000);
  console.log(JSON.stringify({ system: 'Emmett 0.42', writers: w, events_per_second: perSecond }));
}
await store.close();
