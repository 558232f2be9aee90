-- eventrail outbox: a claim walks the keys by progress (least sent first) and stops once it has
-- locked as many due heads as it wants, instead of looking up every key's head to sort them by
-- age. `{outbox_keys}` is replaced by the validated, quoted name of the keys table.
CREATE INDEX ON {outbox_keys} (sent_through);
