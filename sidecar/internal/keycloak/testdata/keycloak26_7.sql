-- What Keycloak 26.7 adds to testdata/keycloak26.sql for the clean-up (jpa-changelog-26.7.0):
-- two columns of jgroups_ping, the persisted authentication sessions, and the version row
-- of migration_model. A legacy JDBC_PING table (JGROUPSPING, configured by hand before 26.1)
-- is left over from an older setup.
ALTER TABLE jgroups_ping ADD COLUMN last_update bigint, ADD COLUMN coordinated_by varchar(200);
CREATE TABLE root_auth_session (
    id        varchar(36) NOT NULL CONSTRAINT pk_root_auth_session PRIMARY KEY,
    realm_id  varchar(36) NOT NULL,
    "timestamp" bigint,
    version   integer
);
CREATE TABLE auth_session (
    root_auth_session_id varchar(36) NOT NULL REFERENCES root_auth_session (id) ON DELETE CASCADE,
    tab_id               varchar(36) NOT NULL,
    client_uuid          varchar(255),
    auth_user_id         varchar(255),
    "timestamp"          bigint,
    version              integer,
    CONSTRAINT pk_auth_session PRIMARY KEY (root_auth_session_id, tab_id)
);
CREATE TABLE migration_model (
    id          varchar(36) NOT NULL PRIMARY KEY,
    version     varchar(36),
    update_time bigint NOT NULL DEFAULT 0
);
CREATE TABLE jgroupsping (
    own_addr     varchar(200) NOT NULL,
    cluster_name varchar(200) NOT NULL,
    ping_data    bytea,
    CONSTRAINT pk_jgroupsping PRIMARY KEY (own_addr, cluster_name)
);
INSERT INTO migration_model VALUES ('m-1', '26.6.1', 100), ('m-2', '26.7.0', 200);
-- Two logins in progress, one with two browser tabs.
INSERT INTO root_auth_session VALUES ('r-1', 'realm', 1, 0), ('r-2', 'realm', 1, 0);
INSERT INTO auth_session (root_auth_session_id, tab_id) VALUES ('r-1', 't-1'), ('r-1', 't-2'), ('r-2', 't-1');
INSERT INTO jgroupsping VALUES ('old-member', 'ISPN', NULL);
