-- 0012: leases for bridge work (issue 15), so that several bridges over one store run each piece
-- of work once and a dead bridge's work is finished by another (docs/scale-out.md, "Leases").
-- A bridge process is alive while its row here is renewed; a live bridge takes over the
-- rows that lapsed (taken_by) and re-handles everything the store still calls pending.
CREATE TABLE bridge_leases (
    owner       TEXT PRIMARY KEY,       -- host/pid/random: one per bridge process
    started_at  REAL NOT NULL,
    lease_until REAL NOT NULL,          -- renewed while the bridge lives
    taken_by    TEXT,                   -- the bridge that took over its work after it lapsed
    taken_at    REAL
);
CREATE INDEX bridge_leases_lapsed ON bridge_leases (lease_until) WHERE taken_by IS NULL;

-- A group task is walked by the bridge holding its lease, which checkpoints where it got to
-- (the last device id, or file line, of the audience whose deliveries are committed) in the
-- same transaction as those deliveries, and renews the lease with each batch.
ALTER TABLE tasks ADD COLUMN lease_owner TEXT;
ALTER TABLE tasks ADD COLUMN lease_until REAL;
ALTER TABLE tasks ADD COLUMN progress TEXT;

-- A scheduled (or approved) message is activated by the bridge that claimed it.
ALTER TABLE messages ADD COLUMN lease_owner TEXT;
ALTER TABLE messages ADD COLUMN lease_until REAL;
