-- llmedge schema 2: the usage ledger. One row per request that passed authentication, and a
-- daily rollup kept in the same transaction, so reports read the rollup, never millions of rows.
-- Cost is integer micro-USD. Times are ms since the Unix epoch; `day` is the UTC day number.
CREATE TABLE llmedge_usage (
    id                TEXT PRIMARY KEY,   -- <gateway instance>-<sequence>: a retried batch adds nothing twice
    request_id        TEXT NOT NULL,
    ts                BIGINT NOT NULL,
    day               BIGINT NOT NULL,
    tenant            TEXT NOT NULL,
    user_name         TEXT NOT NULL,
    key_id            TEXT NOT NULL,
    model             TEXT NOT NULL,
    route             TEXT NOT NULL,
    pool              TEXT NOT NULL,
    backend           TEXT NOT NULL,
    endpoint          TEXT NOT NULL,
    stream            BIGINT NOT NULL,
    status            BIGINT NOT NULL,
    error             TEXT,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cached_tokens     BIGINT NOT NULL,
    cost_micros       BIGINT NOT NULL,
    ttft_ms           BIGINT,
    duration_ms       BIGINT NOT NULL
);
CREATE INDEX llmedge_usage_ts ON llmedge_usage (ts);
CREATE INDEX llmedge_usage_tenant_ts ON llmedge_usage (tenant, ts);
CREATE INDEX llmedge_usage_key_ts ON llmedge_usage (key_id, ts);

CREATE TABLE llmedge_usage_daily (
    day               BIGINT NOT NULL,
    tenant            TEXT NOT NULL,
    key_id            TEXT NOT NULL,
    model             TEXT NOT NULL,
    requests          BIGINT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cached_tokens     BIGINT NOT NULL,
    cost_micros       BIGINT NOT NULL,
    PRIMARY KEY (day, tenant, key_id, model)
);
CREATE INDEX llmedge_usage_daily_tenant ON llmedge_usage_daily (tenant, day);
CREATE INDEX llmedge_usage_daily_key ON llmedge_usage_daily (key_id, day);
