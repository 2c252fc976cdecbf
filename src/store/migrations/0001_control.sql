-- llmedge control plane, schema 1: keys and tenants managed at runtime, and the audit of every
-- change. Written once for SQLite and Postgres. Times are milliseconds since the Unix epoch.

-- `revision` is bumped by every change; each gateway polls it to pick changes up.
CREATE TABLE llmedge_meta (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO llmedge_meta (name, value) VALUES ('revision', 0);

CREATE TABLE llmedge_tenants (
    name       TEXT PRIMARY KEY,
    spec       TEXT NOT NULL,          -- {"limits": {...}, "budget": {...}} as in the YAML
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE llmedge_keys (
    id         TEXT PRIMARY KEY,       -- key_<time><random>, never the secret
    tenant     TEXT NOT NULL,
    name       TEXT NOT NULL,
    user_name  TEXT NOT NULL,
    hint       TEXT NOT NULL,          -- sk-…a1b2
    spec       TEXT NOT NULL,          -- {"models", "pools", "limits", "budget"}
    expires_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    revoked_at BIGINT
);
-- a name is unique among a tenant's live keys
CREATE UNIQUE INDEX llmedge_keys_tenant_name ON llmedge_keys (tenant, name) WHERE revoked_at IS NULL;
CREATE INDEX llmedge_keys_tenant ON llmedge_keys (tenant, id);

-- SHA-256 digests of the secrets a key accepts: the current one (until NULL) and, after a
-- rotation with grace, the retiring ones until their time.
CREATE TABLE llmedge_key_secrets (
    digest TEXT PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES llmedge_keys (id),
    until  BIGINT
);
CREATE INDEX llmedge_key_secrets_key ON llmedge_key_secrets (key_id);

-- one row per change, numbered by the revision it made
CREATE TABLE llmedge_audit (
    revision BIGINT PRIMARY KEY,
    at       BIGINT NOT NULL,
    actor    TEXT NOT NULL,            -- admin:<digest prefix of the admin token>
    action   TEXT NOT NULL,            -- key.create, key.patch, key.revoke, key.rotate, tenant.put, ...
    target   TEXT NOT NULL,
    before   TEXT,
    after    TEXT
);
