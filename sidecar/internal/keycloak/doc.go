// Package keycloak owns the SQL a restored Keycloak database needs before Keycloak starts
// on it: emptying jgroups_ping, whose rows name cluster members that no longer exist, and
// removing the user sessions the restore brought back (Keycloak 26 persists online sessions
// in offline_user_session and offline_client_session with offline_flag = '0', offline
// sessions with offline_flag = '1').
package keycloak
