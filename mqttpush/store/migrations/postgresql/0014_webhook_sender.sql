-- 0014: one bridge at a time sends a webhook's events (a lease on the webhook's row), so several
-- bridges over one store do not POST the same batch twice; a dead bridge's lease lapses and
-- another one resends its batch under the same delivery id.
ALTER TABLE webhooks ADD COLUMN sender TEXT;
ALTER TABLE webhooks ADD COLUMN sender_until DOUBLE PRECISION;
