package grpcwire

// Timeout exposes timeout to the external tests.
var Timeout = timeout
