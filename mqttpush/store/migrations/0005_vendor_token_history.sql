-- 0005: vendor tokens keep their story for `mqttpush device show` (issue 13): when a forward
-- last used one, and a tombstone (when and why) instead of a deleted row when a vendor says
-- it is dead. Forwards use only rows with removed_at IS NULL.
ALTER TABLE vendor_tokens ADD COLUMN last_used_at REAL;
ALTER TABLE vendor_tokens ADD COLUMN removed_at REAL;
ALTER TABLE vendor_tokens ADD COLUMN removed_reason TEXT;
