package grpcwire

import (
	"errors"
	"strconv"
)

// Code is a gRPC status code.
type Code uint32

// The gRPC status codes, numbered as on the wire.
const (
	OK Code = iota
	Canceled
	Unknown
	InvalidArgument
	DeadlineExceeded
	NotFound
	AlreadyExists
	PermissionDenied
	ResourceExhausted
	FailedPrecondition
	Aborted
	OutOfRange
	Unimplemented
	Internal
	Unavailable
	DataLoss
	Unauthenticated
)

var codeNames = [...]string{
	"OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
	"AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
	"OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
}

func (c Code) String() string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return "Code(" + strconv.FormatUint(uint64(c), 10) + ")"
}

// Error is a call's failure: the status the server sent, or one this client gave for what
// went wrong on its side (with the cause in Err).
type Error struct {
	// Method is the call's path, /package.Service/Method.
	Method  string
	Code    Code
	Message string
	// Err is the local cause (the context's error, a transport error), nil for a status sent
	// by the server.
	Err error
}

func (e *Error) Error() string {
	return "rpc " + e.Method + ": " + e.Code.String() + ": " + e.Message
}

// Unwrap returns the local cause, so errors.Is(err, context.DeadlineExceeded) holds for a call
// whose context expired.
func (e *Error) Unwrap() error { return e.Err }

// CodeOf returns err's status code: OK for nil, Unknown for an error that is not an *Error.
func CodeOf(err error) Code {
	if err == nil {
		return OK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return Unknown
}

// httpCode maps the HTTP status of a response without grpc-status to a gRPC code, as gRPC's
// HTTP/2 protocol document says.
func httpCode(status int) Code {
	switch status {
	case 400:
		return Internal
	case 401:
		return Unauthenticated
	case 403:
		return PermissionDenied
	case 404:
		return Unimplemented
	case 429, 502, 503, 504:
		return Unavailable
	}
	return Unknown
}

// decodeMessage undoes grpc-message's percent-encoding. A malformed escape is kept as it is.
func decodeMessage(s string) string {
	var b []byte
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				if b == nil {
					b = append(make([]byte, 0, len(s)), s[:i]...)
				}
				b = append(b, byte(v))
				i += 2
				continue
			}
		}
		if b != nil {
			b = append(b, s[i])
		}
	}
	if b == nil {
		return s
	}
	return string(b)
}
