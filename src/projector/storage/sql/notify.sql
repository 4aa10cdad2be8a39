-- projector's opt-in wake-up: a NOTIFY on channel projector_messages, with the category as the
-- payload, for every statement that inserts messages. Works on Message DB and on projector's
-- own store (both insert through message_store.messages). Installed by `projector migrate
-- --notify`; running it again is harmless. To remove it:
--   DROP TRIGGER projector_notify ON message_store.messages;
--   DROP FUNCTION projector.notify_messages();

CREATE SCHEMA IF NOT EXISTS projector;

-- Per statement, not per row: one notification per category an INSERT touched. Postgres also
-- folds identical notifications of one transaction into one, so a batch of writes to one
-- category costs one NOTIFY at commit, delivered only once the rows are visible.
CREATE OR REPLACE FUNCTION projector.notify_messages() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('projector_messages', c.category)
  FROM (SELECT DISTINCT split_part(stream_name, '-', 1) AS category FROM new_messages) AS c;
  RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS projector_notify ON message_store.messages;
CREATE TRIGGER projector_notify
  AFTER INSERT ON message_store.messages
  REFERENCING NEW TABLE AS new_messages
  FOR EACH STATEMENT EXECUTE FUNCTION projector.notify_messages();
