// Package h2 is HTTP/2's vocabulary (RFC 9113): frame types, flags, settings, error codes and
// the 9-byte frame header. internal/hbone and internal/grpcwire each speak the part of HTTP/2
// they need on top of it, rather than through golang.org/x/net/http2, which imports net/http
// (about 1 MB of ztunnel's binary, whose pages are most of its resident memory). It holds no
// connection logic, so each user keeps its own hot path.
package h2

import "strconv"

// ClientPreface starts every HTTP/2 connection (RFC 9113 section 3.4).
const ClientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// FrameHeaderLen is the size of a frame header.
const FrameHeaderLen = 9

// FrameType is a frame's type (RFC 9113 section 6).
type FrameType uint8

const (
	FrameData         FrameType = 0x0
	FrameHeaders      FrameType = 0x1
	FramePriority     FrameType = 0x2
	FrameRSTStream    FrameType = 0x3
	FrameSettings     FrameType = 0x4
	FramePushPromise  FrameType = 0x5
	FramePing         FrameType = 0x6
	FrameGoAway       FrameType = 0x7
	FrameWindowUpdate FrameType = 0x8
	FrameContinuation FrameType = 0x9
)

var frameNames = [...]string{"DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS", "PUSH_PROMISE", "PING", "GOAWAY", "WINDOW_UPDATE", "CONTINUATION"}

func (t FrameType) String() string {
	if int(t) < len(frameNames) {
		return frameNames[t]
	}
	return "UNKNOWN_FRAME_TYPE_" + strconv.Itoa(int(t))
}

// Frame flags; each means something for some frame types only.
const (
	FlagEndStream  = 0x1  // DATA, HEADERS
	FlagAck        = 0x1  // SETTINGS, PING
	FlagEndHeaders = 0x4  // HEADERS, CONTINUATION
	FlagPadded     = 0x8  // DATA, HEADERS
	FlagPriority   = 0x20 // HEADERS
)

// SettingID names a SETTINGS parameter (RFC 9113 section 6.5.2).
type SettingID uint16

const (
	SettingHeaderTableSize      SettingID = 0x1
	SettingEnablePush           SettingID = 0x2
	SettingMaxConcurrentStreams SettingID = 0x3
	SettingInitialWindowSize    SettingID = 0x4
	SettingMaxFrameSize         SettingID = 0x5
	SettingMaxHeaderListSize    SettingID = 0x6
)

// ErrCode is an RST_STREAM or GOAWAY error code (RFC 9113 section 7).
type ErrCode uint32

const (
	ErrCodeNo                 ErrCode = 0x0
	ErrCodeProtocol           ErrCode = 0x1
	ErrCodeInternal           ErrCode = 0x2
	ErrCodeFlowControl        ErrCode = 0x3
	ErrCodeSettingsTimeout    ErrCode = 0x4
	ErrCodeStreamClosed       ErrCode = 0x5
	ErrCodeFrameSize          ErrCode = 0x6
	ErrCodeRefusedStream      ErrCode = 0x7
	ErrCodeCancel             ErrCode = 0x8
	ErrCodeCompression        ErrCode = 0x9
	ErrCodeConnect            ErrCode = 0xa
	ErrCodeEnhanceYourCalm    ErrCode = 0xb
	ErrCodeInadequateSecurity ErrCode = 0xc
	ErrCodeHTTP11Required     ErrCode = 0xd
)

var errCodeNames = [...]string{"NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
	"STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR",
	"ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED"}

func (e ErrCode) String() string {
	if int(e) < len(errCodeNames) {
		return errCodeNames[e]
	}
	return "unknown error code 0x" + strconv.FormatUint(uint64(e), 16)
}

// AppendFrameHeader appends a frame header to b.
func AppendFrameHeader(b []byte, length int, t FrameType, flags uint8, streamID uint32) []byte {
	return append(b, byte(length>>16), byte(length>>8), byte(length), byte(t), flags,
		byte(streamID>>24), byte(streamID>>16), byte(streamID>>8), byte(streamID))
}
