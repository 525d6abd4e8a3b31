package h2

import (
	"bytes"
	"testing"
)

func TestNames(t *testing.T) {
	for _, tc := range []struct {
		got, want string
	}{
		{FrameData.String(), "DATA"},
		{FrameContinuation.String(), "CONTINUATION"},
		{FrameType(0x42).String(), "UNKNOWN_FRAME_TYPE_66"},
		{ErrCodeRefusedStream.String(), "REFUSED_STREAM"},
		{ErrCodeHTTP11Required.String(), "HTTP_1_1_REQUIRED"},
		{ErrCode(0x1f).String(), "unknown error code 0x1f"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestAppendFrameHeader(t *testing.T) {
	got := AppendFrameHeader([]byte{0xff}, 0x012345, FrameHeaders, FlagEndHeaders|FlagEndStream, 0x80000007)
	want := []byte{0xff, 0x01, 0x23, 0x45, 0x01, 0x05, 0x80, 0x00, 0x00, 0x07}
	if !bytes.Equal(got, want) || len(got)-1 != FrameHeaderLen {
		t.Errorf("AppendFrameHeader = %x, want %x", got, want)
	}
}
