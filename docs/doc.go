// Package docs holds the tests that keep the documentation in this directory true: the
// kcbackup CLI reference (cli.md) is the commands' own --help (make docs regenerates it),
// every test the reliability page names exists, and relative links resolve.
package docs
