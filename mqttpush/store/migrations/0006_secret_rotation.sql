-- 0006: an app secret rotated with an overlap keeps its predecessor until the overlap ends.
ALTER TABLE apps ADD COLUMN previous_secret_enc BLOB;   -- sealed like secret_enc; NULL: none
ALTER TABLE apps ADD COLUMN previous_until REAL;        -- the previous secret verifies while now < this
