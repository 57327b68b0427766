// Package keycloak owns the SQL a restored Keycloak database needs before Keycloak starts
// on it: emptying jgroups_ping (and a hand-configured legacy jgroupsping), whose rows name
// cluster members that no longer exist, and removing the user sessions the restore brought
// back (Keycloak 26 persists online sessions in offline_user_session and
// offline_client_session with offline_flag = '0', offline sessions with offline_flag = '1';
// since 26.7 also logins in progress, in root_auth_session and auth_session). It knows the
// schemas of Keycloak 26.0 to 26.NewestKnownMinor and refuses to remove sessions from a
// database a newer Keycloak migrated.
package keycloak
