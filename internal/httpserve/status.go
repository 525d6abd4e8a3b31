package httpserve

import "strconv"

// The status codes Ambit's handlers and this server send.
const (
	StatusContinue                    = 100
	StatusOK                          = 200
	StatusNoContent                   = 204
	StatusNotModified                 = 304
	StatusBadRequest                  = 400
	StatusUnauthorized                = 401
	StatusForbidden                   = 403
	StatusNotFound                    = 404
	StatusMethodNotAllowed            = 405
	StatusRequestTimeout              = 408
	StatusConflict                    = 409
	StatusLengthRequired              = 411
	StatusRequestEntityTooLarge       = 413
	StatusURITooLong                  = 414
	StatusExpectationFailed           = 417
	StatusRequestHeaderFieldsTooLarge = 431
	StatusInternalServerError         = 500
	StatusNotImplemented              = 501
	StatusServiceUnavailable          = 503
	StatusHTTPVersionNotSupported     = 505
)

var statusText = map[int]string{
	StatusContinue:                    "Continue",
	StatusOK:                          "OK",
	StatusNoContent:                   "No Content",
	StatusNotModified:                 "Not Modified",
	StatusBadRequest:                  "Bad Request",
	StatusUnauthorized:                "Unauthorized",
	StatusForbidden:                   "Forbidden",
	StatusNotFound:                    "Not Found",
	StatusMethodNotAllowed:            "Method Not Allowed",
	StatusRequestTimeout:              "Request Timeout",
	StatusConflict:                    "Conflict",
	StatusLengthRequired:              "Length Required",
	StatusRequestEntityTooLarge:       "Content Too Large",
	StatusURITooLong:                  "URI Too Long",
	StatusExpectationFailed:           "Expectation Failed",
	StatusRequestHeaderFieldsTooLarge: "Request Header Fields Too Large",
	StatusInternalServerError:         "Internal Server Error",
	StatusNotImplemented:              "Not Implemented",
	StatusServiceUnavailable:          "Service Unavailable",
	StatusHTTPVersionNotSupported:     "HTTP Version Not Supported",
}

// StatusText returns the reason phrase of code, or "Status <code>" for a code this package
// does not name (the phrase is informative only; clients go by the number).
func StatusText(code int) string {
	if t, ok := statusText[code]; ok {
		return t
	}
	return "Status " + strconv.Itoa(code)
}

// bodyAllowed reports whether a response with status code may carry a body (RFC 9110
// section 6.4.1).
func bodyAllowed(code int) bool {
	return code >= 200 && code != StatusNoContent && code != StatusNotModified
}
