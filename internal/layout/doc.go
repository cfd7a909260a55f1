// Package layout holds the tests that keep the code's structure as the README's layout section
// describes it: the services and the orchestrator know no backend, and each shared helper has one
// definition.
package layout
