-- A version's parent is named exactly: its HLC (already kept) and now its origin site. Two
-- versions written at two sites can carry the same HLC; with the parent's origin, "the
-- writer had not seen x" (x above the parent) is decided exactly, which is what makes a
-- resource's conflicts a pure function of its version set (records/version-order.ts).
-- Versions written before this migration keep NULL: their parent is ordered by HLC alone.
ALTER TABLE resource_history ADD COLUMN parent_origin text;
ALTER TABLE outbox ADD COLUMN parent_origin text;
