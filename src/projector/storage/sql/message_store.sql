-- projector's own message store: Message DB 1.3-compatible, for databases without Message DB.
--
-- Written for projector from Message DB's documented interface (the messages table, its indexes,
-- the stream-name rules and the server functions), so that projector and any writer built for
-- Message DB work unchanged against either store: same schema, table, column order, index names,
-- function names, argument names and defaults, and the same message_store.message row type.
--
-- Differences from Message DB, on purpose:
--   * every function body names its objects with their schema, so the functions work for any
--     role whatever its search_path (Message DB's need message_store on the search_path);
--   * the stream-name functions and hash_64 are plain SQL expressions, which the planner inlines:
--     a consumer-group read hashes each row without a PL/pgSQL call per function;
--   * the condition argument (a fragment pasted into the query) is always refused;
--   * no role, no extension (gen_random_uuid() is built in from PostgreSQL 13), no views.
--
-- Sent as one script with the simple query protocol (projector.migrate.install_message_store).
-- Running it again is harmless, and it creates nothing outside schema message_store.

DO $$
BEGIN
  IF current_setting('server_version_num')::integer < 130000 THEN
    RAISE EXCEPTION 'projector''s message store needs PostgreSQL 13 or later (this server is %)',
      current_setting('server_version');
  END IF;
END
$$;

CREATE SCHEMA IF NOT EXISTS message_store;

-- Column order as in Message DB, for users who SELECT * or COPY.
CREATE TABLE IF NOT EXISTS message_store.messages (
  global_position bigserial PRIMARY KEY,
  position bigint NOT NULL,
  time timestamp without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
  stream_name text NOT NULL,
  type text NOT NULL,
  data jsonb,
  metadata jsonb,
  id uuid NOT NULL DEFAULT gen_random_uuid()
);

-- CREATE TYPE has no IF NOT EXISTS; an existing type is left alone, since the read functions
-- below depend on it.
DO $$
BEGIN
  IF to_regtype('message_store.message') IS NULL THEN
    CREATE TYPE message_store.message AS (
      id varchar,
      stream_name varchar,
      type varchar,
      position bigint,
      global_position bigint,
      data varchar,
      metadata varchar,
      time timestamp
    );
  END IF;
END
$$;


-- Stream names: "category-id", where the id may be compound ("cardinal+rest").
--
-- These are single-expression SQL functions with no SET clause on purpose: the planner inlines
-- them, both in queries and in the messages_category index expression (which must therefore be
-- IMMUTABLE), so a query written as message_store.category(stream_name) = ... matches the index.

CREATE OR REPLACE FUNCTION message_store.hash_64(value varchar)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  -- The first 16 hex digits of the md5 (8 bytes), read as a signed big-endian 64-bit integer.
  SELECT ('x' || left(md5(hash_64.value), 16))::bit(64)::bigint
$$;

CREATE OR REPLACE FUNCTION message_store.category(stream_name varchar)
RETURNS varchar
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  SELECT split_part(category.stream_name, '-', 1)::varchar
$$;

CREATE OR REPLACE FUNCTION message_store.id(stream_name varchar)
RETURNS varchar
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  SELECT CASE
    WHEN strpos(id.stream_name, '-') > 0
      THEN substr(id.stream_name, strpos(id.stream_name, '-') + 1)::varchar
  END
$$;

CREATE OR REPLACE FUNCTION message_store.cardinal_id(stream_name varchar)
RETURNS varchar
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  -- NULL (no id) stays NULL, so id-less streams fall in no consumer-group member.
  SELECT split_part(message_store.id(cardinal_id.stream_name), '+', 1)::varchar
$$;

CREATE OR REPLACE FUNCTION message_store.is_category(stream_name varchar)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  SELECT strpos(is_category.stream_name, '-') = 0
$$;

CREATE OR REPLACE FUNCTION message_store.message_store_version()
RETURNS varchar
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
  SELECT '1.3.0-projector'::varchar
$$;


-- Writing.

-- The lock is per category, not per stream: write_message draws the next global position while
-- holding it, so within a category rows commit in global-position order and a reader that
-- resumes at its last global position + 1 never passes a row that has yet to commit. Writers
-- built for Message DB take the same key, so both kinds of writer serialise with each other.
CREATE OR REPLACE FUNCTION message_store.acquire_lock(stream_name varchar)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
  _key bigint := message_store.hash_64(message_store.category(acquire_lock.stream_name));
BEGIN
  PERFORM pg_advisory_xact_lock(_key);
  RETURN _key;
END
$$;

CREATE OR REPLACE FUNCTION message_store.stream_version(stream_name varchar)
RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
  SELECT max(m.position)
  FROM message_store.messages m
  WHERE m.stream_name = stream_version.stream_name
$$;

CREATE OR REPLACE FUNCTION message_store.write_message(
  id varchar,
  stream_name varchar,
  type varchar,
  data jsonb,
  metadata jsonb DEFAULT NULL,
  expected_version bigint DEFAULT NULL
)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
  _version bigint;
BEGIN
  PERFORM message_store.acquire_lock(write_message.stream_name);

  -- Read only once the lock is held: this statement's snapshot then includes every earlier
  -- writer to the category, so the version (and the next position) cannot be stale.
  _version := coalesce(message_store.stream_version(write_message.stream_name), -1);

  -- -1 is the version of a stream with no messages: "this must be the stream's first message".
  IF write_message.expected_version IS NOT NULL
      AND write_message.expected_version <> _version THEN
    -- Clients recognise a concurrency conflict by this message's first words.
    RAISE EXCEPTION 'Wrong expected version: % (Stream: %, Stream Version: %)',
      write_message.expected_version, write_message.stream_name, _version;
  END IF;

  INSERT INTO message_store.messages (id, stream_name, position, type, data, metadata)
  VALUES (
    write_message.id::uuid,
    write_message.stream_name,
    _version + 1,
    write_message.type,
    write_message.data,
    write_message.metadata
  );

  RETURN _version + 1;
END
$$;


-- Reading. A batch_size of -1 means no limit (LIMIT NULL); NULL arguments take the defaults.

CREATE OR REPLACE FUNCTION message_store.get_stream_messages(
  stream_name varchar,
  "position" bigint DEFAULT 0,
  batch_size bigint DEFAULT 1000,
  condition varchar DEFAULT NULL
)
RETURNS SETOF message_store.message
LANGUAGE plpgsql STABLE
AS $$
BEGIN
  IF message_store.is_category(get_stream_messages.stream_name) THEN
    RAISE EXCEPTION 'Must be a stream name, not a category: %', get_stream_messages.stream_name
      USING HINT = 'Read a whole category with get_category_messages.';
  END IF;
  IF get_stream_messages.condition IS NOT NULL THEN
    RAISE EXCEPTION 'Retrieval with SQL condition is not supported by projector''s message store';
  END IF;

  RETURN QUERY
    SELECT m.id::varchar, m.stream_name::varchar, m.type::varchar, m.position,
           m.global_position, m.data::varchar, m.metadata::varchar, m.time
    FROM message_store.messages m
    WHERE m.stream_name = get_stream_messages.stream_name
      AND m.position >= coalesce(get_stream_messages.position, 0)
    ORDER BY m.position
    LIMIT nullif(coalesce(get_stream_messages.batch_size, 1000), -1);
END
$$;

-- jit is off inside: a batch is a short index range scan, which JIT compilation only slows
-- down, yet on large tables the planner's estimates can cross jit_above_cost (Message DB's group
-- reads were measured about 20% slower for it).
CREATE OR REPLACE FUNCTION message_store.get_category_messages(
  category varchar,
  "position" bigint DEFAULT 1,
  batch_size bigint DEFAULT 1000,
  correlation varchar DEFAULT NULL,
  consumer_group_member bigint DEFAULT NULL,
  consumer_group_size bigint DEFAULT NULL,
  condition varchar DEFAULT NULL
)
RETURNS SETOF message_store.message
LANGUAGE plpgsql STABLE
SET jit = off
AS $$
BEGIN
  IF NOT message_store.is_category(get_category_messages.category) THEN
    RAISE EXCEPTION 'Must be a category, not a stream name: %', get_category_messages.category
      USING HINT = 'Read a single stream with get_stream_messages.';
  END IF;
  IF get_category_messages.correlation IS NOT NULL
      AND NOT message_store.is_category(get_category_messages.correlation) THEN
    RAISE EXCEPTION 'Correlation must be a category, not a stream name: %',
      get_category_messages.correlation;
  END IF;
  IF (get_category_messages.consumer_group_member IS NULL)
      <> (get_category_messages.consumer_group_size IS NULL) THEN
    RAISE EXCEPTION 'Consumer group member and size go together (member: %, size: %)',
      get_category_messages.consumer_group_member, get_category_messages.consumer_group_size;
  END IF;
  -- Both NULL (no group) makes this test NULL, which IF treats as false.
  IF get_category_messages.consumer_group_size < 1
      OR get_category_messages.consumer_group_member < 0
      OR get_category_messages.consumer_group_member >= get_category_messages.consumer_group_size
  THEN
    RAISE EXCEPTION
      'Consumer group member must be from 0 to size - 1, and size at least 1 (member: %, size: %)',
      get_category_messages.consumer_group_member, get_category_messages.consumer_group_size;
  END IF;
  IF get_category_messages.condition IS NOT NULL THEN
    RAISE EXCEPTION 'Retrieval with SQL condition is not supported by projector''s message store';
  END IF;

  -- The first two conditions are the messages_category index's leading columns, written as the
  -- index is. abs before mod, as in Message DB: Postgres' mod keeps the dividend's sign.
  RETURN QUERY
    SELECT m.id::varchar, m.stream_name::varchar, m.type::varchar, m.position,
           m.global_position, m.data::varchar, m.metadata::varchar, m.time
    FROM message_store.messages m
    WHERE message_store.category(m.stream_name) = get_category_messages.category
      AND m.global_position >= coalesce(get_category_messages.position, 1)
      AND (get_category_messages.correlation IS NULL
           OR message_store.category(m.metadata ->> 'correlationStreamName')
              = get_category_messages.correlation)
      AND (get_category_messages.consumer_group_size IS NULL
           OR mod(abs(message_store.hash_64(message_store.cardinal_id(m.stream_name))),
                  get_category_messages.consumer_group_size)
              = get_category_messages.consumer_group_member)
    ORDER BY m.global_position
    LIMIT nullif(coalesce(get_category_messages.batch_size, 1000), -1);
END
$$;

CREATE OR REPLACE FUNCTION message_store.get_last_stream_message(
  stream_name varchar,
  type varchar DEFAULT NULL
)
RETURNS SETOF message_store.message
LANGUAGE sql STABLE
AS $$
  SELECT m.id::varchar, m.stream_name::varchar, m.type::varchar, m.position,
         m.global_position, m.data::varchar, m.metadata::varchar, m.time
  FROM message_store.messages m
  WHERE m.stream_name = get_last_stream_message.stream_name
    AND (get_last_stream_message.type IS NULL OR m.type = get_last_stream_message.type)
  ORDER BY m.position DESC
  LIMIT 1
$$;


-- Indexes, with Message DB's names. They come after the functions: messages_category is built
-- on message_store.category.

CREATE UNIQUE INDEX IF NOT EXISTS messages_id
  ON message_store.messages (id);

CREATE UNIQUE INDEX IF NOT EXISTS messages_stream
  ON message_store.messages (stream_name, position);

CREATE INDEX IF NOT EXISTS messages_category
  ON message_store.messages (
    message_store.category(stream_name),
    global_position,
    message_store.category(metadata ->> 'correlationStreamName')
  );
