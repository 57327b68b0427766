-- The tables the clean-up touches, with the names, columns and keys Keycloak 26 creates
-- (its Liquibase changelogs, jpa-changelog-26.*; jgroups_ping as JDBC_PING2 creates it).
CREATE TABLE jgroups_ping (
    address      varchar(200) NOT NULL PRIMARY KEY,
    name         varchar(200),
    cluster_name varchar(200) NOT NULL,
    ip           varchar(200) NOT NULL,
    coord        boolean
);
CREATE TABLE offline_user_session (
    user_session_id      varchar(36)  NOT NULL,
    user_id              varchar(255) NOT NULL,
    realm_id             varchar(36)  NOT NULL,
    created_on           integer      NOT NULL,
    offline_flag         varchar(4)   NOT NULL,
    data                 text,
    last_session_refresh integer      NOT NULL DEFAULT 0,
    broker_session_id    varchar(1024),
    version              integer      DEFAULT 0,
    remember_me          boolean      NOT NULL DEFAULT false,
    CONSTRAINT constraint_offl_us_ses_pk2 PRIMARY KEY (user_session_id, offline_flag)
);
CREATE TABLE offline_client_session (
    user_session_id         varchar(36)  NOT NULL,
    client_id               varchar(255) NOT NULL,
    offline_flag            varchar(4)   NOT NULL,
    "timestamp"             integer,
    data                    text,
    client_storage_provider varchar(36)  NOT NULL DEFAULT 'local',
    external_client_id      varchar(255) NOT NULL DEFAULT 'local',
    version                 integer      DEFAULT 0,
    CONSTRAINT constraint_offl_cl_ses_pk3 PRIMARY KEY (user_session_id, client_id, client_storage_provider, external_client_id, offline_flag)
);
-- Two cluster members that no longer exist after a restore.
INSERT INTO jgroups_ping VALUES ('uuid-1', 'keycloak-0', 'ISPN', '10.0.0.1:7800', true),
                                ('uuid-2', 'keycloak-1', 'ISPN', '10.0.0.2:7800', false);
-- Three online sessions ('0') and two offline ones ('1'), each with one client session
-- (the first online user session has two).
INSERT INTO offline_user_session (user_session_id, user_id, realm_id, created_on, offline_flag, data) VALUES
    ('s-on-1', 'alice', 'realm', 1, '0', '{}'), ('s-on-2', 'bob', 'realm', 1, '0', '{}'), ('s-on-3', 'carol', 'realm', 1, '0', '{}'),
    ('s-off-1', 'alice', 'realm', 1, '1', '{}'), ('s-off-2', 'dave', 'realm', 1, '1', '{}');
INSERT INTO offline_client_session (user_session_id, client_id, offline_flag, "timestamp", data) VALUES
    ('s-on-1', 'account', '0', 1, '{}'), ('s-on-1', 'admin-console', '0', 1, '{}'), ('s-on-2', 'account', '0', 1, '{}'),
    ('s-on-3', 'account', '0', 1, '{}'), ('s-off-1', 'mobile', '1', 1, '{}'), ('s-off-2', 'mobile', '1', 1, '{}');
