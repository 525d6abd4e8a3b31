// Package testutil holds helpers shared by Ambit's tests: throwaway network namespaces,
// goroutine and file-descriptor leak checks, polling with a deadline, and scraping a Prometheus
// exposition.
//
// It is for tests only. Import it from _test.go files and from test-support packages such as
// cni/redirect/redirecttest, never from code that ships in a binary. It depends on internal/
// packages only, never on a component, so any component's tests can use it.
package testutil
