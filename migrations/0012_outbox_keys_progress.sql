-- eventrail outbox: a claim walks the keys by progress (least sent first) and stops once it has
-- locked as many due heads as it wants, instead of looking up every key's head to sort them by
-- age; it passes the keys in flight by their own row. `{outbox_keys}` is replaced by the
-- validated, quoted name of the keys table.

-- Until when a relay's claim holds the key: set with its head's lease by the claim, cleared by
-- the settle and the release of that lease. Only a hint that lets a walk pass a key in flight
-- without looking up its head: the head's lease decides, and once the hint runs out (a lease
-- renewed past it, a relay that died) the walk looks at the head again.
ALTER TABLE {outbox_keys} ADD COLUMN claimed_until timestamptz;

CREATE INDEX ON {outbox_keys} (sent_through);
