-- The outbox table of docker-compose.yml's example connector (huaqiao-cases), created once
-- when the postgres volume is new. Exactly connectors/outbox.py's outbox_ddl() for the
-- connector's defaults (schema public, table bus_outbox); tests/unit/test_deploy.py checks.
-- Regenerate: python -c "from connectors.outbox import outbox_ddl; print(outbox_ddl(), end='')"

CREATE SCHEMA IF NOT EXISTS public;

CREATE TABLE IF NOT EXISTS public.bus_outbox (
    id             bigserial   PRIMARY KEY,          -- publication order
    event_id       uuid        NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    aggregate_id   text        NOT NULL,             -- the subject: the enterprise's USCC
    event_type     text        NOT NULL,             -- e.g. penalty.imposed
    schema_version integer     NOT NULL DEFAULT 1,
    payload        jsonb       NOT NULL,             -- the event type's payload
    occurred_at    timestamptz NOT NULL DEFAULT now(),
    correlation_id text,                             -- null: the event starts its own case
    causation_id   uuid,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at   timestamptz,                      -- null: not yet handed to the bus
    error          text                              -- why the bus will refuse it, if it will
);

-- Every row is updated once: vacuum and analyze it often, as a queue wants.
ALTER TABLE public.bus_outbox SET (
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02
);

CREATE INDEX IF NOT EXISTS bus_outbox_pending ON public.bus_outbox (id) WHERE published_at IS NULL;

CREATE OR REPLACE FUNCTION public.bus_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('public.bus_outbox', '');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS bus_outbox_notify ON public.bus_outbox;
CREATE TRIGGER bus_outbox_notify AFTER INSERT ON public.bus_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION public.bus_outbox_notify();
