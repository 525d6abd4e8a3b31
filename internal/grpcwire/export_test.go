package grpcwire

import "time"

// Timeout exposes timeout to the external tests.
var Timeout = timeout

// SetSettingsTimeout sets how long a connection waits for the server's SETTINGS, until the
// returned function restores it.
func SetSettingsTimeout(d time.Duration) (restore func()) {
	old := settingsTimeout
	settingsTimeout = d
	return func() { settingsTimeout = old }
}
